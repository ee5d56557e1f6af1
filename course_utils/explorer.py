"""An interactive CAM explorer: flip images, methods, layers and classes and watch the map move.

`Explorer` holds the state and does the work, with no widget in sight (tests drive it directly):
the image (the validation set ordered by loss, most wrong first, or any file), the method (CAM
where it is exact, Grad-CAM), the layer (every stage of the body), the class and the opacity.
Maps are cached per (image, class): one `gradcam` call gives every layer at once, so a change of
layer, opacity, or back to a class already seen, runs no forward pass. `render()` returns the
overlay as PNG bytes. `explore(learn)` puts ipywidgets over it; `explore_grid(learn)` is the
static fallback (one matplotlib figure) for places without widgets.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cam import cam, gradcam, normalize, pointing_hits, upsample
from .modules import eval_mode, submodules
from .viz import image_array

__all__ = ["Explorer", "ExplorerState", "body_stages", "explore", "explore_grid", "explore_text",
           "text_view", "METHODS"]

METHODS = ("Grad-CAM", "CAM")
Item = Union[str, os.PathLike, Any]          # a file, or anything `dls.test_dl` accepts (a PILImage)


def body_stages(model: nn.Module) -> dict[str, nn.Module]:
    """Every top-level stage of a fastai vision model's body `model[0]`, by name (`model[0][i]`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (e.g. learn.model), got {type(model).__name__}")
    if not isinstance(model, nn.Sequential) or len(model) < 2 or not list(model[0].children()):
        raise ValueError("expected a fastai vision model, Sequential(body, head) with a Sequential body "
                         "(as vision_learner builds); for another model pass layers={'name': module}")
    return {f"model[0][{name}]": child for name, child in model[0].named_children()}


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: image index, method, layer name, class (None: the predicted one), opacity."""
    index: int
    method: str
    layer: str
    target: Optional[int]
    opacity: float


class Explorer:
    """The explorer's state and computations, without widgets; every setter validates its input.

    `items` default to the validation set, most wrong first; `layers` to the body's stages;
    `boxes` (file name -> head box) to the `boxes.csv` of each image's folder, as SynthPets has.
    """

    def __init__(self, learn: Any, items: Optional[Sequence[Item]] = None,
                 layers: Optional[Mapping[str, nn.Module]] = None, boxes: Optional[Mapping] = None,
                 opacity: float = 0.5):
        if not hasattr(learn, "model") or not hasattr(learn, "dls"):
            raise TypeError(f"learn must be a fastai Learner (get_learner()), got {type(learn).__name__}")
        self.learn, self.model, self.dls = learn, learn.model, learn.dls
        self.vocab = list(self.dls.vocab)
        self.layers = dict(body_stages(self.model) if layers is None else layers)
        if not self.layers or not all(isinstance(m, nn.Module) for m in self.layers.values()):
            raise ValueError("layers must map names to modules of the model, e.g. {'body': learn.model[0]}")
        self._boxes = None if boxes is None else dict(boxes)   # None: each folder's own boxes file
        self._folder_boxes: dict = {}
        self.cam_problem = None                # why CAM is not offered, or None if it is exact here
        self._maps: dict = {}                  # (index, method, target) -> {layer name: raw map [h,w]}
        self._inputs: dict = {}                # index -> batch [1,C,H,W]
        self._probs: dict = {}                 # index -> probabilities [classes]
        self._pictures: dict = {}              # index -> decoded image [H,W,3] uint8
        if items is None:
            self.items, self.labels, self.losses = self._by_loss()
        else:
            if isinstance(items, (str, os.PathLike)):
                raise TypeError("items must be a list of images, e.g. items=[path]; for one file pass [path]")
            self.items = [Path(i) if isinstance(i, (str, os.PathLike)) else i for i in items]
            self.labels, self.losses = [None] * len(self.items), [None] * len(self.items)
        if not self.items:
            raise ValueError("no images: pass items=[file, ...] or a learner with a validation set")
        self._check_cam()
        self.state = ExplorerState(0, "Grad-CAM", list(self.layers)[-1], None, 0.5)
        self.set_opacity(opacity)

    # ------------------------------------------------------------------ set-up
    def _by_loss(self) -> tuple[list, list, list]:
        """The validation items, their labels and losses, most wrong (highest loss) first."""
        losses, labels = [], []
        for xb, yb in self.dls.valid:
            logits = _scores(self.model, xb)
            losses += F.cross_entropy(logits, _plain(yb), reduction="none").tolist()
            labels += _plain(yb).tolist()
        items = list(self.dls.valid.items)[:len(losses)]
        order = sorted(range(len(losses)), key=lambda i: -losses[i])
        return [items[i] for i in order], [labels[i] for i in order], [losses[i] for i in order]

    def _check_cam(self) -> None:
        """Offer CAM only where it is exact: `cam` verifies the head (GAP → Linear) on the first image."""
        try:
            cam(self.model, self.input(0), 0)
        except ValueError as e:
            self.cam_problem = str(e)
        self._cam_layer = self._last_layer_name()

    def _last_layer_name(self) -> Optional[str]:
        """The name of the layer whose output the head pools (the body's last stage), if listed."""
        try:
            last = self.model[0][-1]
        except (TypeError, IndexError, KeyError, NotImplementedError):   # not Sequential(body, head)
            return None
        return next((n for n, m in self.layers.items() if m is last), None)

    @property
    def methods(self) -> list[str]:
        """The methods on offer: Grad-CAM always, CAM when the head makes it exact."""
        return list(METHODS) if self.cam_problem is None and self._cam_layer else ["Grad-CAM"]

    # ------------------------------------------------------------------ setters
    def set_image(self, index: int) -> None:
        """Show image `index` of `items` (ordered by loss when the explorer chose them)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.items):
            raise ValueError(f"image index must be an int in 0..{len(self.items) - 1}, got {index!r}")
        self.state = replace(self.state, index=index)

    def add_image(self, item: Item) -> int:
        """Add any image (a file path or a PILImage) to the list and show it; returns its index."""
        if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
            raise ValueError(f"{item} is not a file: give the path of an image")
        self.items.append(Path(item) if isinstance(item, (str, os.PathLike)) else item)
        self.labels.append(None)
        self.losses.append(None)
        self.set_image(len(self.items) - 1)
        return len(self.items) - 1

    def set_method(self, method: str) -> None:
        """'Grad-CAM', or 'CAM' (exact, so only at the layer the head pools: the layer moves there)."""
        if method not in self.methods:
            why = f": {self.cam_problem}" if method == "CAM" and self.cam_problem else ""
            raise ValueError(f"method must be one of {self.methods}, got {method!r}{why}")
        layer = self._cam_layer if method == "CAM" else self.state.layer
        self.state = replace(self.state, method=method, layer=layer)

    def set_layer(self, name: str) -> None:
        """Show the map of the layer called `name` (see `layers`)."""
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; choose one of {list(self.layers)}")
        if self.state.method == "CAM" and name != self._cam_layer:
            raise ValueError(f"CAM is exact only at {self._cam_layer}, the layer the head pools; "
                             "switch the method to Grad-CAM to look at another layer")
        self.state = replace(self.state, layer=name)

    def set_target(self, target: Optional[int]) -> None:
        """Explain class index `target` of `dls.vocab`, or None for the predicted class."""
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)
                                   or not 0 <= target < len(self.vocab)):
            raise ValueError(f"target must be None (the predicted class) or a class index "
                             f"0..{len(self.vocab) - 1} of {self.vocab}, got {target!r}")
        self.state = replace(self.state, target=target)

    def set_opacity(self, opacity: float) -> None:
        """How strongly the map covers the image, from 0 (image only) to 1 (map only)."""
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
            raise ValueError(f"opacity must be a number between 0 and 1, got {opacity!r}")
        self.state = replace(self.state, opacity=float(opacity))

    # ------------------------------------------------------------------ what is shown
    def input(self, index: Optional[int] = None) -> torch.Tensor:
        """The model's input batch `[1,C,H,W]` for image `index` (default: the current one), cached."""
        index = self.state.index if index is None else index
        if index not in self._inputs:
            from fastai.torch_core import to_cpu
            batch = next(iter(self.dls.test_dl([self.items[index]])))
            self._inputs[index] = _plain(to_cpu(batch[0]))
        return self._inputs[index]

    def probabilities(self) -> torch.Tensor:
        """Softmax of the model's scores for the current image, `[classes]` (one forward, then cached)."""
        i = self.state.index
        if i not in self._probs:
            x = self.input(i)
            with _one_thread():
                self._probs[i] = _scores(self.model, x).softmax(1)[0]
        return self._probs[i]

    @property
    def prediction(self) -> int:
        """The predicted class index for the current image."""
        return int(self.probabilities().argmax())

    @property
    def target(self) -> int:
        """The class being explained: the chosen one, or the prediction."""
        return self.prediction if self.state.target is None else self.state.target

    def cam_map(self) -> torch.Tensor:
        """The current raw map `[h,w]`: every layer's map for (image, class) comes from one call."""
        s = self.state
        key = (s.index, s.method, self.target)
        if key not in self._maps:
            x, target = self.input(), self.target
            with _one_thread():
                if s.method == "CAM":
                    self._maps[key] = {self._cam_layer: cam(self.model, x, target)[0]}
                else:
                    names = list(self.layers)
                    maps = gradcam(self.model, x, [self.layers[n] for n in names], target)
                    self._maps[key] = {n: m[0] for n, m in zip(names, maps)}
        return self._maps[key][s.layer]

    def box(self) -> Optional[tuple]:
        """The current image's ground-truth head box (x0, y0, x1, y1) at input size, or None."""
        item = self.items[self.state.index]
        boxes = self._boxes_for(item)
        if not isinstance(item, Path) or item.name not in boxes:
            return None
        from PIL import Image
        with Image.open(item) as im:
            w, h = im.size
        size = self.input().shape[-1]
        if w != h:                    # fastai's Resize crops a non-square picture: the box would move
            return None
        return tuple(round(v * size / w) for v in boxes[item.name])

    def _boxes_for(self, item: Item) -> Mapping:
        """The head boxes that apply to `item`: those given, else its folder's (SynthPets has them)."""
        if self._boxes is not None or not isinstance(item, Path):
            return self._boxes or {}
        if item.parent not in self._folder_boxes:
            from .data import BOXES_FILE, load_boxes
            found = (item.parent / BOXES_FILE).is_file()
            self._folder_boxes[item.parent] = load_boxes(item.parent) if found else {}
        return self._folder_boxes[item.parent]

    def hit(self) -> Optional[bool]:
        """Whether the map's peak hits the head box (pointing game, 15 px at 224 px), or None without a box."""
        box = self.box()
        if box is None:
            return None
        size = tuple(self.input().shape[-2:])
        return bool(pointing_hits(upsample(self.cam_map(), size)[None], [box], 15 * size[1] / 224)[0])

    def picture(self) -> np.ndarray:
        """The current image as displayed, `[H,W,3]` uint8 (decoded once: fastai's decode takes ~35 ms)."""
        i = self.state.index
        if i not in self._pictures:
            arr = np.asarray(image_array(self.dls.train.decode((self.input(),))[0][0]), dtype=np.float64)
            if arr.max() <= 1.0:
                arr = arr * 255
            arr = np.clip(arr, 0, 255).astype(np.uint8)
            self._pictures[i] = np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr
        return self._pictures[i]

    def overlay(self, scale: int = 2) -> np.ndarray:
        """The image with the map over it (magma colours at the state's opacity) and the head box, `[H,W,3]` uint8."""
        from matplotlib import colormaps
        from PIL import Image, ImageDraw
        pic = self.picture()
        h, w = pic.shape[:2]
        heat = normalize(upsample(self.cam_map(), (h, w))).numpy()
        colour = colormaps["magma"](heat)[..., :3] * 255
        a = self.state.opacity
        blend = Image.fromarray(((1 - a) * pic + a * colour).round().astype(np.uint8))
        blend = blend.resize((w * scale, h * scale), Image.BILINEAR)
        box = self.box()
        if box is not None:
            x0, y0, x1, y1 = (v * scale for v in box)
            ImageDraw.Draw(blend).rectangle((x0, y0, x1 + scale - 1, y1 + scale - 1),
                                            outline=(0, 255, 0), width=max(1, scale))
        return np.asarray(blend)

    def render(self, scale: int = 2) -> bytes:
        """The overlay (see `overlay`) as PNG bytes, for a widget or a file."""
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(self.overlay(scale)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def caption(self) -> str:
        """One line of text about the current view: truth, prediction, probabilities, map size, hit."""
        i = self.state.index
        probs = self.probabilities().tolist()
        parts = [f"{_name(self.items[i])}"]
        if self.labels[i] is not None:
            parts.append(f"true: {self.vocab[self.labels[i]]}, loss {self.losses[i]:.3f}")
        parts.append("predicted: " + f"{self.vocab[self.prediction]} · " +
                     ", ".join(f"P({v}) = {p:.3f}" for v, p in zip(self.vocab, probs)))
        m = self.cam_map()
        parts.append(f"{self.state.method} of {self.vocab[self.target]} at {self.state.layer} "
                     f"({m.shape[0]}×{m.shape[1]})")
        hit = self.hit()
        if hit is not None:
            parts.append("peak on the head box" if hit else "peak misses the head box")
        return " | ".join(parts)


# ---------------------------------------------------------------------------- helpers
def _plain(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (fastai's tensor subclasses refuse to mix in some ops)."""
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor else t


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` without gradients in eval mode, the model's modes restored: the class scores."""
    with torch.no_grad(), eval_mode(submodules(model)):
        return _plain(model(x))


@contextmanager
def _one_thread():
    """Run one image's passes on one torch thread, then restore the count. On a busy 2-core
    machine a second thread makes a batch-1 pass wait for a descheduled peer: measured stalls of
    0.1-1.5 s instead of ~2 ms (benchmarks/explorer.py --threads 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _name(item: Item) -> str:
    return item.name if isinstance(item, Path) else type(item).__name__


# ---------------------------------------------------------------------------- widgets
def explore(learn: Any, items: Optional[Sequence[Item]] = None, **kwargs: Any):
    """The explorer as ipywidgets: image, method, layer, class and opacity controls over the overlay.

    Returns the widget box (a notebook displays it); its `.explorer` is the `Explorer` behind it.
    """
    import ipywidgets as W
    ex = Explorer(learn, items, **kwargs)
    image = W.Dropdown(options=_image_options(ex), value=0, description="image",
                       layout=W.Layout(width="420px"))
    method = W.ToggleButtons(options=ex.methods, value=ex.state.method, description="method")
    layer = W.Dropdown(options=list(ex.layers), value=ex.state.layer, description="layer")
    # -1 stands for "the predicted class": a Dropdown's None means "nothing selected"
    target = W.Dropdown(options=[("predicted", -1)] + [(str(v), i) for i, v in enumerate(ex.vocab)],
                        value=-1, description="class")
    opacity = W.FloatSlider(value=ex.state.opacity, min=0, max=1, step=0.05, description="opacity")
    path = W.Text(placeholder="any image file, then Enter", description="open", continuous_update=False)
    view = W.Image(value=ex.render(), format="png")
    view.add_class("cam-overlay")
    info, error = W.HTML(), W.HTML()
    info.add_class("cam-caption")

    def refresh() -> None:
        view.value = ex.render()
        info.value = "<br>".join(ex.caption().split(" | "))
        layer.disabled = ex.state.method == "CAM"
        layer.value = ex.state.layer

    def on(setter):
        def handler(change):
            try:
                setter(change["new"])
                error.value = ""
            except ValueError as e:
                error.value = f"<span style='color:#b00'>{e}</span>"
            refresh()
        return handler

    def open_file(change):
        if not change["new"].strip():
            return
        try:
            ex.add_image(change["new"].strip())
        except ValueError as e:
            error.value = f"<span style='color:#b00'>{e}</span>"
            return
        image.options = _image_options(ex)
        image.value = ex.state.index

    image.observe(on(ex.set_image), "value")
    method.observe(on(ex.set_method), "value")
    layer.observe(on(lambda v: v != ex.state.layer and ex.set_layer(v)), "value")
    target.observe(on(lambda v: ex.set_target(None if v == -1 else v)), "value")
    opacity.observe(on(ex.set_opacity), "value")
    path.observe(open_file, "value")
    refresh()
    box = W.VBox([W.HBox([image, path]), method, W.HBox([layer, target]), opacity,
                  W.HBox([view, info]), error])
    box.add_class("cam-explorer")
    box.explorer = ex
    return box


def _image_options(ex: Explorer) -> list[tuple[str, int]]:
    """Dropdown labels: rank, file name and, for validation images, truth and loss."""
    out = []
    for i, (item, label, loss) in enumerate(zip(ex.items, ex.labels, ex.losses)):
        extra = f" ({ex.vocab[label]}, loss {loss:.2f})" if label is not None else ""
        out.append((f"{i + 1}. {_name(item)}{extra}", i))
    return out


# ---------------------------------------------------------------------------- static fallback
def explore_grid(learn: Any, n: int = 4, layers: Optional[Sequence[str]] = None, method: str = "Grad-CAM"):
    """One matplotlib figure: the `n` highest-loss validation images (rows) × layers (columns),
    each with its map for the predicted class and the head box; for places without widgets."""
    import matplotlib.pyplot as plt
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (how many images), got {n!r}")
    ex = Explorer(learn)
    ex.set_method(method)
    names = list(ex.layers) if layers is None else list(layers)
    n = min(n, len(ex.items))
    fig, axs = plt.subplots(n, len(names), figsize=(2.2 * len(names), 2.4 * n), squeeze=False)
    for r in range(n):
        ex.set_image(r)
        for c, name in enumerate(names):
            ex.set_layer(name)
            ax = axs[r, c]
            ax.imshow(ex.overlay(scale=1))
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            hit = ex.hit()
            if hit is not None:
                ax.set_xlabel("hit" if hit else "miss", fontsize=8)
        true = ex.vocab[ex.labels[r]] if ex.labels[r] is not None else "?"
        axs[r, 0].set_ylabel(f"true {true}\npred {ex.vocab[ex.prediction]}", fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- text
def text_view(model: nn.Module, ids_row: torch.Tensor, vocab: Sequence[str], attribute: Any,
              target: int, classes: Sequence[str] = ("negative", "positive")) -> str:
    """HTML for one review: the model's probabilities, then its words coloured by their attribution
    to class `target`, as `attribute(model, ids [1,L], target) -> [1,L]` computes it (padding dropped)."""
    from .text import PAD, word_highlights
    if not isinstance(ids_row, torch.Tensor) or ids_row.dim() != 1:
        raise ValueError("ids_row must be one review's token ids [L] (e.g. ids[i])")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(classes):
        raise ValueError(f"target must be a class index 0..{len(classes) - 1} of {list(classes)}, got {target!r}")
    probs = _scores(model, ids_row[None])[0].softmax(0).tolist()
    attr = attribute(model, ids_row[None], target)[0]
    keep = ids_row != PAD
    words = [vocab[i] for i in ids_row[keep].tolist()]
    head = ", ".join(f"P({c}) = {p:.3f}" for c, p in zip(classes, probs))
    return f"<p>{head} · attributions to <b>{classes[target]}</b></p><p>{word_highlights(words, attr[keep])}</p>"


def explore_text(model: nn.Module, ids: torch.Tensor, vocab: Sequence[str], attribute: Any,
                 labels: Optional[Sequence[int]] = None, classes: Sequence[str] = ("negative", "positive")):
    """Widgets to pick a review (most wrong first when `labels` are given) and a class, showing
    `text_view`; returns the widget box, whose `.show(i, target)` gives the same HTML."""
    import ipywidgets as W
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or not len(ids):
        raise ValueError("ids must be the reviews' token ids [N, L] (from encode)")
    order = list(range(len(ids)))
    if labels is not None:
        y = torch.as_tensor(list(labels))
        if len(y) != len(ids):
            raise ValueError(f"got {len(y)} labels for {len(ids)} reviews: give one per review")
        losses = F.cross_entropy(_scores(model, ids), y, reduction="none")
        order = losses.argsort(descending=True).tolist()

    def label(i: int) -> str:
        words = " ".join(vocab[t] for t in ids[i].tolist()[:10] if t)
        truth = f"[{classes[int(labels[i])]}] " if labels is not None else ""
        return f"{truth}{words} …"

    review = W.Dropdown(options=[(label(i), i) for i in order], description="review",
                        layout=W.Layout(width="90%"))
    target = W.Dropdown(options=[(c, k) for k, c in enumerate(classes)], description="class")
    out = W.HTML()

    def show(i: int, k: int) -> str:
        return text_view(model, ids[i], vocab, attribute, k, classes)

    def refresh(_=None) -> None:
        out.value = show(review.value, target.value)

    if labels is not None:
        target.value = int(labels[order[0]])
    review.observe(refresh, "value")
    target.observe(refresh, "value")
    refresh()
    box = W.VBox([review, target, out])
    box.show = show
    return box
