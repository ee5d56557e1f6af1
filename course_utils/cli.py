"""The `course` command: the instructor's verbs; `course demo` runs them all on the example class.

`course release / collect / grade / feedback / export / status` are the instructor's week;
`course demo` runs that week on `examples/class/` in a scratch course folder (what `make demo`
does); `course figure` draws the Grad-CAM figure of one validation image (the former `demo`).

Thin by design: parse, validate, call the library, turn its errors into an exit code. Installed
as the `course` console script; `python -m course_utils` is the same command.
"""
from __future__ import annotations

import argparse
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Run the `course` command line; returns the exit code."""
    from .autograde.cli import add_commands
    parser = argparse.ArgumentParser(prog="course", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the whole instructor workflow on the example class (what `make demo` runs)",
                       description="In a scratch course folder: load or train the default model, release, collect "
                                   "examples/class/*.zip with its roster, grade in the sandbox, write feedback pages "
                                   "and grades.csv, print the gradebook. Rerunning reuses what is done.")
    p.add_argument("--out", type=Path, default=Path("outputs") / "example-class", help="the scratch course folder")
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxed workers (default: CPU cores)")
    p.set_defaults(run=_demo)
    p = sub.add_parser("figure", help="build data and model (offline default), save a Grad-CAM figure")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for gradcam.png")
    p.add_argument("--online", action="store_true",
                   help="real PETS + pretrained resnet34 (needs internet; default: offline SynthPets)")
    p.add_argument("--index", type=int, default=0, help="which validation image to explain")
    p.set_defaults(run=_figure)
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _figure(args: argparse.Namespace) -> int:
    path = figure(args.out, online=args.online or None, index=args.index)
    print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import warnings
    from .autograde.workflow import run_example
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    from .autograde import SandboxUnavailable
    from .autograde.cli import EXIT_SANDBOX
    try:
        done = run_example(args.out, workers=args.workers, log=lambda m: print(m, flush=True))
    except SandboxUnavailable as e:      # the example class has hostile notebooks: never run them unconfined
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    print("\nGradebook (score/max status):\n" + done.table)
    flagged = [p for p in done.pages if p.status in ("flagged", "failed", "not graded")]
    print(f"\nfeedback pages: {done.course / 'feedback'}/<student>/<lesson>/<lesson>.html ({len(done.pages)} pages)"
          + "".join(f"\n  {p.status}: {p.path}" for p in flagged))
    print(f"grades for the LMS: {done.grades_csv}")
    return 0
