"""Checks used by the notebooks' test cells: judge the answer, not its warnings, and trust no look-alike.

nbgrader gives 0 to a test cell that writes anything to stderr, so a correct answer that happens to
warn (the book's `register_backward_hook` does) would lose its points: `quiet()` keeps warnings and
stderr out of the cell. A student's cell can also return an object whose `==` is always true, or
replace `torch.allclose`: the checks below use functions captured when course_utils was imported
(before any student code ran) and accept only genuine tensors.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any, Iterator

import torch

__all__ = ["quiet", "check_tensor", "check_number", "check_bool", "as_tensor"]

_allclose, _isfinite, _as_subclass = torch.allclose, torch.isfinite, torch.Tensor.as_subclass
_isinstance, _type, _float = isinstance, type, float


@contextlib.contextmanager
def quiet() -> Iterator[list]:
    """Run a test body with warnings recorded (not printed) and stderr discarded; yields the warnings."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        yield caught


def _genuine(value: Any) -> bool:
    """A torch.Tensor, or one of fastai's tensor types (which do not redefine comparison)."""
    cls = _type(value)
    return cls is torch.Tensor or (_isinstance(value, torch.Tensor) and cls.__module__.startswith("fastai."))


def as_tensor(value: Any, name: str = "your result") -> torch.Tensor:
    """`value` as a plain, detached CPU tensor, or an AssertionError saying what was returned instead."""
    if not _genuine(value):
        raise AssertionError(f"{name} should be a torch.Tensor, but it is a {_type(value).__name__}")
    return _as_subclass(value, torch.Tensor).detach().cpu()


def check_tensor(value: Any, expected: torch.Tensor, name: str = "your result",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Assert that `value` is a tensor with the expected shape, kind of dtype and values."""
    got = as_tensor(value, name)
    want = _as_subclass(expected, torch.Tensor).detach().cpu()
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if got.is_floating_point() != want.is_floating_point():
        raise AssertionError(f"{name} has dtype {got.dtype}, expected a {want.dtype} tensor")
    got, want = got.double(), want.double()
    if not bool(_isfinite(got).all()):
        raise AssertionError(f"{name} contains NaN or infinite values")
    if not _allclose(got, want, rtol=rtol, atol=atol):
        worst = float((got - want).abs().max())
        raise AssertionError(f"{name} has the right shape but wrong values (largest difference {worst:.3g})")


def check_number(value: Any, expected: float, name: str = "your result", rel: float = 1e-4,
                 abs_tol: float = 1e-6) -> None:
    """Assert that `value` is a real number (int, float or a one-element tensor) close to `expected`."""
    if _isinstance(value, torch.Tensor):
        value = as_tensor(value, name)
        if value.numel() != 1:
            raise AssertionError(f"{name} should be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if _type(value) not in (int, float):
        raise AssertionError(f"{name} should be a number, but it is a {_type(value).__name__}")
    if not math.isclose(_float(value), _float(expected), rel_tol=rel, abs_tol=abs_tol):
        raise AssertionError(f"{name} is {value}, which is not the expected value")


def check_bool(value: Any, expected: bool, name: str = "your result") -> None:
    """Assert that `value` is exactly True or False (not a truthy look-alike) and equals `expected`."""
    if _type(value) is not bool:
        raise AssertionError(f"{name} should be True or False, but it is a {_type(value).__name__}")
    if value is not expected:
        raise AssertionError(f"{name} is {value}, expected {expected}")
