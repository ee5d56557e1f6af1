"""Does the map point at the evidence the model uses? Deletion and insertion curves (Petsiuk et al. 2018).

Deletion removes the pixels the map ranks most important first and records the target class
probability: a faithful map makes it fall fast (low area under the curve). Insertion starts from
a blurred image and puts the most important pixels back first: a faithful map makes the
probability rise fast (high area). Both need no ground truth; all images and steps run batched.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .cam import upsample
from .inputs import Targets, check_batch, target_indices
from .modules import eval_mode, submodules
from .tensors import plain

__all__ = ["pixel_ranks", "blur", "deletion_curve", "insertion_curve", "curve_auc",
           "deletion_auc", "insertion_auc"]


def pixel_ranks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each pixel's rank `[N,H,W]` (0 = most important) after upsampling `maps [N,h,w]` to `size`;
    ties keep reading order, so the order is deterministic."""
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError("maps must be a batch of maps [N,h,w] (one map: maps[None])")
    up = upsample(maps.detach().float(), size).flatten(1) if tuple(maps.shape[-2:]) != tuple(size) \
        else maps.detach().float().flatten(1)
    order = torch.argsort(-up, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(up.shape[1], device=up.device).expand_as(order))
    return ranks.view(-1, *size)


def blur(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """A Gaussian blur of the batch `[N,C,H,W]` (per channel, reflected edges): insertion's start image."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x must be a 4-D batch [N,C,H,W]")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    r = min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1)                        # [C,1,2r+1]
    c = x.shape[1]
    out = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k[:, :, None, :], groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k[:, :, :, None], groups=c)


def _curve(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Targets, steps: int,
           start: torch.Tensor, end: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Target probability `[N, steps+1]` of images that show `end` where the map's rank is below
    k_i = round(i/steps * H*W) and `start` elsewhere (i = 0..steps)."""
    check_batch(model, x)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (the curve has steps+1 points), got {steps!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be one map per image [N,h,w] with N={x.shape[0]}, got {shape}")
    n, _, h, w = x.shape
    ranks = pixel_ranks(maps, (h, w)).to(x.device)                   # [N,H,W]
    counts = torch.tensor([round(i / steps * h * w) for i in range(steps + 1)], device=x.device)
    image = torch.arange(n, device=x.device).repeat_interleave(steps + 1)
    step = torch.arange(steps + 1, device=x.device).repeat(n)
    out = torch.empty(n * (steps + 1), device=x.device)
    modules = submodules(model)
    with torch.no_grad(), eval_mode(modules):
        t = None
        for s0 in range(0, n * (steps + 1), batch_size):
            s = slice(s0, min(s0 + batch_size, n * (steps + 1)))
            shown = (ranks[image[s]] < counts[step[s], None, None])[:, None]       # [B,1,H,W]
            probs = F.softmax(plain(model(torch.where(shown, end[image[s]], start[image[s]]))).float(), 1)
            if t is None:
                t = target_indices(targets, n, probs.shape[1], probs.device)
            out[s] = probs.gather(1, t[image[s], None])[:, 0]
    return out.view(n, steps + 1)


def deletion_curve(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Targets,
                   steps: int = 16, baseline: Union[float, torch.Tensor] = 0.0,
                   batch_size: int = 64) -> torch.Tensor:
    """Target probability `[N, steps+1]` as the map's most important pixels are replaced by
    `baseline` first (a value, or an image batch), from none (0) to all of them (steps)."""
    xp = plain(x.detach())
    base = torch.as_tensor(baseline, dtype=xp.dtype, device=xp.device).expand_as(xp)
    return _curve(model, xp, maps, targets, steps, start=xp, end=base, batch_size=batch_size)


def insertion_curve(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Targets,
                    steps: int = 16, baseline: Optional[torch.Tensor] = None,
                    batch_size: int = 64) -> torch.Tensor:
    """Target probability `[N, steps+1]` as the map's most important pixels are put back first
    into `baseline` (default: the image blurred, as Petsiuk et al.), from none to all of them."""
    xp = plain(x.detach())
    base = blur(xp) if baseline is None else torch.as_tensor(baseline, dtype=xp.dtype,
                                                             device=xp.device).expand_as(xp)
    return _curve(model, xp, maps, targets, steps, start=base, end=xp, batch_size=batch_size)


def curve_auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under each curve `[N, steps+1]` over the fraction of pixels 0..1 (trapezoid rule), `[N]`."""
    if not isinstance(curve, torch.Tensor) or curve.dim() not in (1, 2) or curve.shape[-1] < 2:
        raise ValueError("curve must be [steps+1] or [N, steps+1] with at least two points")
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * (curve.shape[-1] - 1))


def deletion_auc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Targets,
                 steps: int = 16, batch_size: int = 64) -> torch.Tensor:
    """Area under the deletion curve per image `[N]`: lower means a more faithful map."""
    return curve_auc(deletion_curve(model, x, maps, targets, steps, batch_size=batch_size))


def insertion_auc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Targets,
                  steps: int = 16, batch_size: int = 64) -> torch.Tensor:
    """Area under the insertion curve per image `[N]`: higher means a more faithful map."""
    return curve_auc(insertion_curve(model, x, maps, targets, steps, batch_size=batch_size))
