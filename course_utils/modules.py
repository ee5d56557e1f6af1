"""A model's modules: list them all, and run a block in eval mode with every flag restored.

Every method here needs eval mode (no dropout, no BatchNorm statistics update) without changing
the caller's model for good: each module's own `training` flag is put back, so a model that was
half frozen in eval mode stays exactly so. The flags are switched on the list of modules rather
than by `model.eval()`, which would lose the per-module state.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

__all__ = ["submodules", "switch_to_eval", "restore_training", "eval_mode"]


def submodules(model: nn.Module) -> list[nn.Module]:
    """`list(model.modules())` (shared modules may repeat) at a third of the cost: gradcam needs
    it on every call, and on a small model `modules()` costs as much as all the other checks."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (e.g. learn.model), got {type(model).__name__}")
    found, todo = [], [model]
    while todo:
        m = todo.pop()
        if m is not None:                 # a child slot may hold None
            found.append(m)
            todo.extend(m._modules.values())
    return found


def switch_to_eval(modules: list[nn.Module]) -> list[nn.Module]:
    """Put the modules in eval mode (no dropout, no BatchNorm statistics update) and return the
    ones that were training, for `restore_training`. An eval-mode model costs nothing here."""
    if isinstance(modules, nn.Module):
        raise TypeError("pass the list of modules, submodules(model), not the model itself")
    training = [m for m in modules if m.training]
    for m in training:
        m.training = False
    return training


def restore_training(training: list[nn.Module]) -> None:
    """Put back in training mode the modules `switch_to_eval` returned."""
    for m in training:
        m.training = True


@contextmanager
def eval_mode(modules: list[nn.Module]) -> Iterator[None]:
    """Run the block with `modules` (e.g. `submodules(model)`) in eval mode, then restore every flag,
    however the block ends."""
    training = switch_to_eval(modules)
    try:
        yield
    finally:
        restore_training(training)
