"""fastai's tensor subclasses as plain tensors.

fastai wraps batches in `TensorImage`, `TensorCategory`, ...; their type dispatch refuses to mix
subclasses in some ops (e.g. `gather`), and callers of this library should get plain maps back.
"""
from __future__ import annotations

import torch

__all__ = ["plain"]


def plain(t: torch.Tensor) -> torch.Tensor:
    """The same tensor (same data, same graph) as a plain `torch.Tensor`, so that fastai's
    subclasses (`TensorImage`, `TensorCategory`) mix in any op; a plain tensor is returned as is."""
    if type(t) is torch.Tensor:
        return t
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a tensor (e.g. a fastai TensorImage), got {type(t).__name__}")
    return t.as_subclass(torch.Tensor)
