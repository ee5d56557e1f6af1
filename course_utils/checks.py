"""Checks used by the notebooks' test cells: judge the answer, not its warnings, and trust no look-alike.

A test cell is written once and runs in two modes. `with examine(globals()) as S:` gives the test
`S`, the student's notebook: `S.name` is one of its names, `S.f(x)` calls its function `f`. In the
notebook itself (Validate, plain `nbgrader autograde`, Colab), `S` is the notebook's own namespace.
Under `course grade`, the test runs in the grader's examiner process instead, and `S` asks the
student's process for values over a channel, so the student's code never sees the test and cannot
decide its verdict. `S.send(value)` puts a copy of a tensor or a torch.nn model in the notebook and
returns the notebook's copy (the examiner keeps its own to compute what to expect). `S.source(name)`
is the code of the notebook's top-level `def` (or assignment) of `name`, read from the notebook's
cells rather than asked of its process, for the checks that ask *how* an answer was written.

nbgrader gives 0 to a test cell that writes anything to stderr, so a correct answer that happens to
warn (the book's `register_backward_hook` does) would lose its points: `quiet()` keeps warnings and
stderr out of the cell. A student's cell can also return an object whose `==` is always true, or
replace `torch.allclose`: the checks below use functions captured when course_utils was imported
(before any student code ran) and accept only genuine tensors.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import math
import warnings
from typing import Any, Iterator

import torch

__all__ = ["examine", "quiet", "check_tensor", "check_number", "check_bool", "as_tensor", "is_a"]

_allclose, _isfinite, _as_subclass = torch.allclose, torch.isfinite, torch.Tensor.as_subclass
_isinstance, _type, _float = isinstance, type, float


@contextlib.contextmanager
def quiet() -> Iterator[list]:
    """Run a test body with warnings recorded (not printed) and stderr discarded; yields the warnings."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        yield caught


class InProcess:
    """`S` when a test runs in the notebook's own process: its names, and copies of what is sent."""

    def __init__(self, namespace: dict):
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._namespace[name]
        except KeyError:
            raise AssertionError(f"`{name}` is not defined: run the cell that defines it, "
                                 "and keep its name") from None

    def send(self, value: Any) -> Any:
        """A copy of `value`, as the examiner's process would put in the notebook."""
        return copy.deepcopy(value)

    def source(self, name: str) -> str:
        """The code that last defined `name` among the cells this kernel ran (IPython's `In`)."""
        return definition(self._namespace.get("In") or [], name)


def definition(cells: Any, name: str) -> str:
    """The source of the last top-level `def`, `class` or assignment of `name` in these cells' code.

    Only a cell's own statements count, not those inside an `if`, a loop or a `try`: a definition
    there may never run (`if False:`). Cells that are not Python (magics) are read as far as
    IPython can translate them."""
    if not _isinstance(name, str) or not name.isidentifier():
        raise TypeError("source() takes the name of a function, e.g. S.source('gradcam_keepdim')")
    found = None
    for cell in cells:
        text = _python(cell) if _isinstance(cell, str) else None
        tree = _parse(text) if text else None
        for node in tree.body if tree else []:
            if name in _bound_by(node):
                found = ast.get_source_segment(text, node) or found
    if found is None:
        raise AssertionError(f"no cell defines `{name}` with a `def` at the top level: "
                             "write it as one, in a code cell of its own")
    return found


def _python(cell: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return cell
    try:
        return TransformerManager().transform_cell(cell)
    except Exception:           # noqa: BLE001 - a cell IPython cannot read defines nothing here
        return cell


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _bound_by(node: ast.stmt) -> set[str]:
    if _isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if _isinstance(node, ast.Assign) else \
        [node.target] if _isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return {n.id for t in targets for n in ast.walk(t) if _isinstance(n, ast.Name)}


_examiner: Any = None       # set in the grader's examiner process only


def use_examiner(student: Any) -> None:
    """For the grader's examiner process: `examine()` then gives this remote view of the notebook."""
    global _examiner
    _examiner = student


@contextlib.contextmanager
def examine(namespace: dict) -> Iterator[Any]:
    """`with examine(globals()) as S:` the body of a test cell, quiet, with `S` the student's notebook."""
    if not isinstance(namespace, dict):
        raise TypeError("examine() takes the notebook's namespace: examine(globals())")
    with quiet():
        yield _examiner if _examiner is not None else InProcess(namespace)


def _type_name(value: Any) -> str:
    """The name of a value's type; for an object of the student's process, the type it has there."""
    remote = getattr(_type(value), "__slots__", ())
    return value.__student_type__ if "__student_type__" in remote else _type(value).__name__


def is_a(value: Any, class_name: str) -> bool:
    """Whether `value` is an instance of a class called `class_name` (`"Module"`, `"Hook"`), in both modes.

    Asked by name along the class's MRO, so it holds for an object that stays in the student's process
    too: there the names come with its handle, from the grader's end of the channel rather than from a
    function the notebook could redefine (that process can still lie about its own answers, as about
    any value it returns)."""
    if not _isinstance(class_name, str):
        raise TypeError("is_a() takes a class name, e.g. is_a(layer, 'Module')")
    if "__student_kinds__" in getattr(_type(value), "__slots__", ()):
        return class_name in value.__student_kinds__
    return any(getattr(c, "__name__", None) == class_name for c in _type(value).__mro__)


def _genuine(value: Any) -> bool:
    """A torch.Tensor, or one of fastai's tensor types (which do not redefine comparison)."""
    cls = _type(value)
    return cls is torch.Tensor or (_isinstance(value, torch.Tensor) and cls.__module__.startswith("fastai."))


def as_tensor(value: Any, name: str = "your result") -> torch.Tensor:
    """`value` as a plain, detached CPU tensor, or an AssertionError saying what was returned instead."""
    if not _genuine(value):
        raise AssertionError(f"{name} should be a torch.Tensor, but it is a {_type_name(value)}")
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
        raise AssertionError(f"{name} should be a number, but it is a {_type_name(value)}")
    if not math.isclose(_float(value), _float(expected), rel_tol=rel, abs_tol=abs_tol):
        raise AssertionError(f"{name} is {value}, which is not the expected value")


def check_bool(value: Any, expected: bool, name: str = "your result") -> None:
    """Assert that `value` is exactly True or False (not a truthy look-alike) and equals `expected`."""
    if _type(value) is not bool:
        raise AssertionError(f"{name} should be True or False, but it is a {_type_name(value)}")
    if value is not expected:
        raise AssertionError(f"{name} is {value}, expected {expected}")
