"""A classifier's inputs, checked before the model runs: the image batch and the target classes.

A wrong batch or class would otherwise fail deep inside the model (or, for a class out of range,
inside `gather` on the GPU); these checks raise at once, with the fix in the message.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .tensors import plain

__all__ = ["Targets", "check_batch", "target_indices"]

Targets = Union[int, Sequence[int], torch.Tensor]   # one class for all images, or one per image


def check_batch(model: nn.Module, x: torch.Tensor) -> None:
    """Reject a model that is not an nn.Module and an `x` that is not a batch `[N,C,H,W]`, which
    would otherwise fail deep inside the model, with the fix in the message."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (e.g. learn.model), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor batch [N,C,H,W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D batch [N,C,H,W], got shape {tuple(x.shape)}; "
                         "for one image use x[None] (or first(dls.test_dl([img])))")


def target_indices(targets: Targets, n: int, n_classes: int, device: Union[str, torch.device, None]
                   ) -> torch.Tensor:
    """One class index per image `[n]`, as a long tensor on `device`, after checking the type,
    the count (one int for all `n` images, or one per image) and the range `0..n_classes-1`.

    The range is checked on Python ints where possible: this runs on every call, and tensor
    comparisons cost more than the rest of the bookkeeping on a small model.
    """
    def bad_type() -> TypeError:
        return TypeError(f"targets must be an int or one int per image, got {targets!r:.60}")
    if isinstance(targets, (bool, str, bytes)):
        raise bad_type()
    try:
        t = plain(torch.as_tensor(targets))
    except (TypeError, ValueError, RuntimeError):
        raise bad_type() from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise bad_type()
    if t.dim() == 0:
        t = t.expand(n)                                  # one class for every image
    elif t.dim() != 1 or t.numel() != n:
        raise ValueError(f"got {t.numel()} targets for {n} images: give one class per image "
                         "or a single int for all")
    values = t.tolist()
    if n and not 0 <= min(values) <= max(values) < n_classes:
        raise ValueError(f"target class out of range: the model has {n_classes} classes "
                         f"(0..{n_classes - 1}), got {values}")
    return t.to(device=device, dtype=torch.long)
