"""Hooks that store what a layer computes: its output (forward) or the gradient at its output (backward).

Every holder is a context manager and its `remove()` is idempotent, so a `with` block always
leaves the module as it found it, even when the body raises.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["Hook", "HookBwd", "Hooks"]


def _check_module(module: object) -> nn.Module:
    """Fail early, with the fix, when something that is not a layer is handed to a hook."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"expected an nn.Module (a layer such as learn.model[0]), got {type(module).__name__}")
    return module


def _detach_clone(out):
    """A copy of a layer output that later in-place ops and autograd cannot touch."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detach_clone(o) for o in out)
    return out


class _HookBase:
    """Owns one forward-hook handle: registers it, removes it once, and works as a context manager."""

    def __init__(self, module: nn.Module):
        self.module = _check_module(module)
        self.stored = None
        self._handle = module.register_forward_hook(self.hook_func)

    def hook_func(self, module: nn.Module, inputs, output) -> None:
        raise NotImplementedError

    @property
    def removed(self) -> bool:
        """True once the hook can no longer fire."""
        return self._handle is None

    def remove(self) -> None:
        """Detach the hook from the module; calling it again does nothing."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()  # never swallows the body's exception

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"{type(self).__name__}({type(self.module).__name__}, {state})"


class Hook(_HookBase):
    """Forward hook: `.stored` is a detached clone of the module's latest output."""

    def hook_func(self, module: nn.Module, inputs, output) -> None:
        self.stored = _detach_clone(output)


class HookBwd(_HookBase):
    """Backward hook: `.stored` is the gradient of the loss with respect to the module's output.

    It registers a tensor hook on the output during the forward pass instead of using
    `register_backward_hook` (deprecated, and wrong for modules with several operations) or
    `register_full_backward_hook` (fails when the output is later modified in place, as
    torchvision ResNets do: pytorch/pytorch#61519). A tensor hook registered before an in-place
    change receives the gradient for the value the module returned, which is what we want.
    """

    def hook_func(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"HookBwd needs a module that returns one tensor; {type(module).__name__} "
                f"returned {type(output).__name__}. Hook a sub-module that returns a tensor.")
        if output.requires_grad:  # no graph (e.g. under torch.no_grad()): nothing to store
            output.register_hook(self._store_grad)

    def _store_grad(self, grad: torch.Tensor) -> None:
        self.stored = grad.detach().clone()


class Hooks:
    """Many hooks at once (one per module), with the same context-manager guarantees."""

    def __init__(self, modules: Iterable[nn.Module], hook_cls: type = Hook):
        if isinstance(modules, nn.Module):
            modules = [modules]
        self.hooks: list[_HookBase] = []
        try:
            for module in modules:
                self.hooks.append(hook_cls(module))
        except BaseException:
            self.remove()  # a bad module half-way through must not leave the first hooks behind
            raise

    @property
    def stored(self) -> list:
        """What each hook stored, in the order of the modules."""
        return [h.stored for h in self.hooks]

    def remove(self) -> None:
        """Remove every hook; calling it again does nothing."""
        for h in self.hooks:
            h.remove()

    def __getitem__(self, i: int) -> _HookBase:
        return self.hooks[i]

    def __len__(self) -> int:
        return len(self.hooks)

    def __iter__(self):
        return iter(self.hooks)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()
