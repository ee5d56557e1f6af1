"""Class activation maps: the exact CAM, the chapter's einsum, batched Grad-CAM, and how to score them.

All maps are returned raw, `[N, h, w]` at the layer's resolution: resizing (`upsample`) and
scaling (`normalize`) are separate, explicit steps, as in captum. A new gradient method is only
its channel weights, handed to `gradient_cam`; a method without gradients (Score-CAM) builds on
the same steps: `checked_layers`, `recorded_forward`, `checked_outputs`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import Targets, check_batch, target_indices
from .modules import eval_mode, restore_training, submodules, switch_to_eval
from .tensors import plain

__all__ = ["gradcam", "gradient_cam", "gradcam_weights", "weighted_sum", "cam", "book_cam", "upsample", "normalize",
           "pointing_hits", "pointing_game", "energy_in_box", "checked_layers", "recorded_forward",
           "checked_outputs"]

Boxes = Union[Sequence[Sequence[float]], torch.Tensor]  # one (x0, y0, x1, y1) per map, in pixels


# ---------------------------------------------------------------- input checks
def _check_layers(modules: list[nn.Module], layers: Sequence[nn.Module]) -> None:
    if not layers:
        raise ValueError("give at least one layer")
    inside = {id(m) for m in modules}
    for layer in layers:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"a layer must be an nn.Module (e.g. learn.model[0]), "
                            f"got {type(layer).__name__}")
        if id(layer) not in inside:
            raise ValueError(f"layer {type(layer).__name__} is not part of the model; pass a "
                             "sub-module of this model, e.g. learn.model[0] or learn.model[0][-2]")


def _check_spatial(act: torch.Tensor, layer: nn.Module) -> None:
    if not isinstance(act, torch.Tensor) or act.dim() != 4:
        shape = tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__
        raise ValueError(f"the output of {type(layer).__name__} is {shape}, not a spatial map "
                         "[N,C,h,w]; pick a convolutional layer (e.g. learn.model[0])")


# ---------------------------------------------------------------- shared machinery
def _recording_hook(record: list, gradients: bool = True):
    """A forward hook that records the layer's output on the graph and hands the rest of the
    network a copy.

    The model runs with gradients off until the first recorded layer switches them on, so
    autograd records only what comes after it: Grad-CAM needs no graph before the layer, and not
    building one makes the pass cheaper than a plain forward (see benchmarks/). That first output
    becomes a leaf that requires grad, so frozen layers need no flag change. The copy keeps the
    recorded tensor safe from in-place ops downstream (ReLU(inplace=True), `out += identity`).
    With `gradients=False` (Score-CAM) no graph is built at all and the output is kept as a copy.
    """
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return None
        if not gradients:
            record.append(output.detach().clone())
            return None
        torch.set_grad_enabled(True)            # the graph starts here
        act = output if output.requires_grad else output.detach().requires_grad_()
        record.append(act)
        return act.clone()
    return hook


def recorded_forward(model: nn.Module, modules: list[nn.Module], layers: Sequence[nn.Module],
                     x: torch.Tensor, gradients: bool = True
                     ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """(the scores, each layer's recorded outputs): `model(x)` in eval mode with the output of each
    of `layers` recorded every time it runs (see `_recording_hook`; `gradients=False` builds no
    graph). The model's flags, its hooks and the grad mode are restored however the pass ends.

    `modules` and `layers` are what `checked_layers` returns, and are not checked again: gradcam
    pays this on every call (for the same reason this is one function, not three context managers).
    """
    records: list[list[torch.Tensor]] = [[] for _ in layers]
    grad_was_enabled = torch.is_grad_enabled()
    training = switch_to_eval(modules)
    handles = []
    try:
        for layer, record in zip(layers, records):
            handles.append(layer.register_forward_hook(_recording_hook(record, gradients)))
        torch.set_grad_enabled(False)
        return model(x), records
    finally:
        torch.set_grad_enabled(grad_was_enabled)
        for h in handles:
            h.remove()
        restore_training(training)


def _single_output(record: list, layer: nn.Module) -> torch.Tensor:
    if len(record) != 1:
        raise ValueError(f"{type(layer).__name__} ran {len(record)} times in one forward pass; "
                         "Grad-CAM needs a layer that runs exactly once (hook a distinct module)")
    return record[0]


# ---------------------------------------------------------------- the core every CAM method shares
Layers = Union[nn.Module, Sequence[nn.Module]]
# (activation [N,K,h,w], gradient [N,K,h,w]) -> weights [N,K] (one per channel) or [N,K,h,w] (per element)
Weigh = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checked_layers(model: nn.Module, x: torch.Tensor, layer: Layers
                   ) -> tuple[bool, list[nn.Module], list[nn.Module]]:
    """(was a list given, the layers, the model's modules) after checking the batch and that each
    layer is part of the model: the first step of every CAM method, before `recorded_forward`."""
    many = not isinstance(layer, nn.Module)
    layers = list(layer) if many else [layer]
    check_batch(model, x)
    modules = submodules(model)
    _check_layers(modules, layers)
    return many, layers, modules


def checked_outputs(records: list[list[torch.Tensor]], layers: list[nn.Module], logits: torch.Tensor
                    ) -> list[torch.Tensor]:
    """Each layer's one output `[N,K,h,w]` from what `recorded_forward` returned, after checking
    that every layer ran exactly once and gave a spatial map, and that the scores are `[N, classes]`."""
    acts = [_single_output(r, l) for r, l in zip(records, layers)]
    for act, l in zip(acts, layers):
        _check_spatial(act, l)
    if logits.dim() != 2:
        raise ValueError(f"the model must return scores [N, classes], got {tuple(logits.shape)}")
    return acts


def gradient_cam(model: nn.Module, x: torch.Tensor, layer: Layers, targets: Targets,
                 weigh: Weigh, relu: bool = True, name: str = "gradient_cam"
                 ) -> Union[torch.Tensor, list[torch.Tensor]]:
    """The shared core of the gradient CAMs: raw `[N,h,w]` maps ReLU(sum_k W_k * A_k) where
    `W = weigh(A, dScore/dA)`, so that a new method is only its `weigh` function.

    One recorded forward, one `torch.autograd.grad` to the layer outputs only (no parameter
    `.grad` written), eval mode with every flag restored, no hook left. `weigh` returns one weight
    per channel `[N,K]` or per element `[N,K,h,w]`. A list of layers returns a list of maps.
    """
    if not callable(weigh):
        raise TypeError(f"weigh must be a function (activation, gradient) -> weights, got {weigh!r:.60}")
    many, layers, modules = checked_layers(model, x, layer)
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{name} needs gradients but was called under torch.no_grad(); "
                           "call it outside that block (or inside torch.enable_grad())")
    logits, records = recorded_forward(model, modules, layers, x)
    acts = checked_outputs(records, layers, logits)
    t = target_indices(targets, x.shape[0], logits.shape[1], logits.device)
    score = plain(logits).gather(1, t[:, None]).sum()  # images are independent: one backward for all
    grads = torch.autograd.grad(score, acts, allow_unused=True) if score.requires_grad else [None]
    for g, l in zip(grads, layers):
        if g is None:
            raise ValueError(f"the model's scores do not depend on the output of {type(l).__name__}; "
                             "pick a layer on the path from the input to the scores")
    maps = []
    for a, g in zip(acts, grads):
        a, g = plain(a.detach()), plain(g)
        maps.append(weighted_sum(weigh(a, g), a, relu))
    return maps if many else maps[0]


def weighted_sum(weights: torch.Tensor, act: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """sum_k W_k * A_k over the channels of `act [N,K,h,w]`, for channel weights `[N,K]` or
    element weights `[N,K,h,w]`; then ReLU unless `relu=False`. Every CAM ends with this."""
    if not isinstance(act, torch.Tensor) or act.dim() != 4:
        raise ValueError("act must be activations [N,K,h,w]")
    n, k, h, w = act.shape
    if isinstance(weights, torch.Tensor) and weights.shape == (n, k):
        m = torch.bmm(weights[:, None], act.reshape(n, k, h * w)).view(n, h, w)
    elif isinstance(weights, torch.Tensor) and weights.shape == act.shape:
        m = (weights * act).sum(1)
    else:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be [N,K]={[n, k]} (one per channel) or [N,K,h,w]="
                         f"{list(act.shape)} (one per element), got {shape}")
    return m.clamp_min_(0) if relu else m


# ---------------------------------------------------------------- Grad-CAM
def gradcam_weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM's channel weights (Selvaraju et al. 2017): the spatial mean of the gradient, `[N,K]`."""
    return grad.mean(dim=(2, 3))


def gradcam(model: nn.Module, x: torch.Tensor,
            layer: Union[nn.Module, Sequence[nn.Module]], targets: Targets,
            relu: bool = True) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Batched Grad-CAM (Selvaraju et al. 2017): raw `[N,h,w]` maps of `layer` for `targets`.

    Channel weights are the spatial mean of d(score)/d(activation); the map is ReLU(sum_k w_k A_k)
    (`relu=False` keeps the sign). Gradients are taken with `torch.autograd.grad` with respect to
    the layer output only, so no parameter `.grad` is written. The model runs in eval mode and its
    flags are restored. A list of layers returns a list of maps from one forward and one backward pass.
    """
    return gradient_cam(model, x, layer, targets, gradcam_weights, relu, "gradcam")


# ---------------------------------------------------------------- CAM
def cam(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Exact CAM (Zhou et al. 2016) `[N,h,w]` for a model whose head is global-average-pool → one Linear.

    For such a head the map's mean over locations plus the Linear's bias is exactly the logit.
    The head is verified on this very batch: the final Linear's input must equal the spatial mean
    of the last AdaptiveAvgPool2d's input, and the Linear's output must be the model's output.
    """
    check_batch(model, x)
    pool, linear = _gap_and_linear(model)
    with torch.no_grad(), eval_mode(submodules(model)), _capture_io(pool, linear) as io:
        logits = model(x)
    act, lin_in, lin_out = io.get("act"), io.get("lin_in"), io.get("lin_out")
    _check_gap_linear_head(act, lin_in, lin_out, logits, linear)
    t = target_indices(targets, x.shape[0], logits.shape[1], logits.device)
    return torch.einsum("nk,nkhw->nhw", plain(linear.weight.detach())[t], plain(act))


_NOT_GAP_LINEAR = ("cam needs a head that is global-average-pool followed directly by one Linear "
                   "(as in `custom_head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
                   "nn.Linear(k, n))`); {why}. fastai's default head (AdaptiveConcatPool2d, "
                   "BatchNorm, Linear(…, 512), ReLU, Linear(512, n)) is not: its last Linear sees "
                   "512 hidden units, not the body's channels. Use gradcam for any other head.")


def _gap_and_linear(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not pools or not linears:
        raise ValueError(_NOT_GAP_LINEAR.format(why="this model has no AdaptiveAvgPool2d or no Linear"))
    return pools[-1], linears[-1]


@contextmanager
def _capture_io(pool: nn.Module, linear: nn.Module):
    io: dict = {}
    handles = [
        pool.register_forward_hook(lambda m, i, o: io.__setitem__("act", i[0])),
        linear.register_forward_hook(lambda m, i, o: io.update(lin_in=i[0], lin_out=o)),
    ]
    try:
        yield io
    finally:
        for h in handles:
            h.remove()


def _check_gap_linear_head(act, lin_in, lin_out, logits, linear) -> None:
    if act is None or lin_in is None:
        raise ValueError(_NOT_GAP_LINEAR.format(why="the pool or the Linear did not run"))
    _check_spatial(act, linear)
    act, lin_in, lin_out, logits = map(plain, (act, lin_in, lin_out, logits))
    gap = act.mean(dim=(2, 3))
    if lin_in.shape != gap.shape or not torch.allclose(lin_in, gap, rtol=1e-4, atol=1e-5):
        raise ValueError(_NOT_GAP_LINEAR.format(
            why=f"the last Linear's input {tuple(lin_in.shape)} is not the average-pooled "
                f"activation {tuple(gap.shape)}"))
    if lin_out is not logits and not torch.equal(lin_out, logits):
        raise ValueError(_NOT_GAP_LINEAR.format(why="the last Linear's output is not the model's output"))


def book_cam(act: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The chapter's CAM: `einsum('ck,kij->cij', weight, act)`, one map per class from one activation.

    It is an exact CAM only when `weight` is the Linear that directly follows global average
    pooling of `act` (see `cam`); with fastai's default head the sizes may match by coincidence.
    """
    if not isinstance(act, torch.Tensor) or act.dim() != 3:
        raise ValueError("act must be one image's activation [k, h, w] (e.g. hook.stored[0])")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a Linear's weight [classes, k] (e.g. learn.model[1][-1].weight)")
    if weight.shape[1] != act.shape[0]:
        raise ValueError(f"weight has {weight.shape[1]} inputs but act has {act.shape[0]} channels; "
                         "use the weight of the Linear that follows the pooled activation")
    return torch.einsum("ck,kij->cij", weight, act)


# ---------------------------------------------------------------- resizing and scaling
def _as_batch(maps: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3):
        raise ValueError("maps must be a tensor [N,h,w] (or one map [h,w])")
    return (maps[None], True) if maps.dim() == 2 else (maps, False)


def upsample(maps: torch.Tensor, size: Union[int, tuple[int, int]]) -> torch.Tensor:
    """Resize maps `[N,h,w]` (or `[h,w]`) to the image size with bilinear interpolation."""
    batch, single = _as_batch(maps)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or (H, W) of positive ints, got {size}")
    out = F.interpolate(batch[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return out[0] if single else out


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] by its own min and max; a constant map becomes all zeros."""
    batch, single = _as_batch(maps)
    flat = batch.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny),
                      torch.zeros_like(flat)).view_as(batch)
    return out[0] if single else out


# ---------------------------------------------------------------- scoring against boxes
def _check_boxes(maps: torch.Tensor, boxes) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _ = _as_batch(maps)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) if len(boxes) else torch.zeros(0, 4)
    if b.shape[0] != batch.shape[0]:
        raise ValueError(f"got {b.shape[0]} boxes for {batch.shape[0]} maps: one (x0, y0, x1, y1) per map")
    return batch, b


def pointing_hits(maps: torch.Tensor, boxes: Boxes, tolerance: float = 15.0) -> torch.Tensor:
    """Per map, whether its maximum lies within `tolerance` pixels of the box (Zhang et al. 2016).

    `maps` must be at image resolution (use `upsample`); boxes are (x0, y0, x1, y1) in pixels,
    both ends included. 15 px is the protocol's tolerance at 224 px.
    """
    batch, b = _check_boxes(maps, boxes)
    w = batch.shape[-1]
    peak = batch.flatten(1).argmax(1)
    y, x = (peak // w).float(), (peak % w).float()
    dx = torch.clamp(torch.maximum(b[:, 0] - x, x - b[:, 2]), min=0)
    dy = torch.clamp(torch.maximum(b[:, 1] - y, y - b[:, 3]), min=0)
    return (dx ** 2 + dy ** 2).sqrt() <= tolerance


def pointing_game(maps: torch.Tensor, boxes: Boxes, tolerance: float = 15.0) -> float:
    """Pointing-game accuracy: hits / (hits + misses) over the maps (see `pointing_hits`)."""
    hits = pointing_hits(maps, boxes, tolerance)
    return hits.float().mean().item() if hits.numel() else float("nan")


def energy_in_box(maps: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Per map, the share of its positive mass inside the box (0 for a map with none)."""
    batch, b = _check_boxes(maps, boxes)
    pos = batch.clamp_min(0)
    h, w = batch.shape[-2:]
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = ((xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None]) &
              (ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None]))
    total = pos.flatten(1).sum(1)
    return torch.where(total > 0, (pos * inside).flatten(1).sum(1) / total.clamp_min(1e-30),
                       torch.zeros_like(total))
