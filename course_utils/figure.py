"""The Grad-CAM figure of one validation image (`course figure`, `make figure`): body and inner stage side by side."""
from __future__ import annotations

import time
from pathlib import Path


def figure(out: Path, online: bool | None = None, index: int = 0) -> Path:
    """Build (or load) the default data and model, and save Grad-CAM of one validation image."""
    import warnings
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")  # fastai's import
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .cam import gradcam
    from .model import get_learner
    from .viz import image_array, show_cam

    start = time.perf_counter()
    learn = get_learner(online=online)
    print(f"model ready in {time.perf_counter() - start:.1f} s")
    valid = learn.dls.valid_ds
    if not 0 <= index < len(valid):
        raise ValueError(f"--index must be between 0 and {len(valid) - 1}")
    x = learn.dls.test_dl([valid.items[index]]).one_batch()[0]
    with torch.no_grad():
        probs = torch.softmax(learn.model.eval()(x), dim=-1)[0]
    pred = int(probs.argmax())
    layers = {"body (learn.model[0])": learn.model[0], "inner stage (learn.model[0][-2])": learn.model[0][-2]}
    maps = gradcam(learn.model, x, list(layers.values()), pred)
    image = learn.dls.train.decode((x,))[0][0]
    fig, axes = plt.subplots(1, 3, figsize=(10, 4))
    axes[0].imshow(image_array(image))
    axes[0].axis("off")
    label = "cat" if str(learn.dls.vocab[pred]) == "True" else "dog"   # vocab is [False, True]: is_cat
    axes[0].set_title(f"{Path(valid.items[index]).name}\npredicted {label}, p={probs[pred].item():.3f}",
                      fontsize=9)
    for ax, (name, m) in zip(axes[1:], zip(layers, maps)):
        show_cam(image, m[0], ax=ax)
        ax.set_title(f"Grad-CAM, {name}", fontsize=9)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gradcam.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
