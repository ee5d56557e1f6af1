"""The notebook checks: fair to warnings, unfooled by look-alikes and by patched comparisons."""
import sys
import warnings

import pytest
import torch

from course_utils.checks import as_tensor, check_bool, check_number, check_tensor, quiet


class AlwaysEqual:
    def __eq__(self, other):
        return True


class SneakyTensor(torch.Tensor):
    """A student's tensor subclass that claims to equal anything."""
    def __eq__(self, other):
        return True


def test_quiet_keeps_warnings_and_stderr_out_of_the_cell(capfd):
    with quiet() as caught:
        warnings.warn("register_backward_hook is deprecated", UserWarning)
        print("noise", file=sys.stderr)
    assert [str(w.message) for w in caught] == ["register_backward_hook is deprecated"]
    assert capfd.readouterr().err == ""


def test_quiet_lets_a_failing_check_fail():
    with pytest.raises(AssertionError, match="wrong values"):
        with quiet():
            check_tensor(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("fake", [AlwaysEqual(), [0.0, 0.0], torch.zeros(2).numpy(),
                                  torch.zeros(2).as_subclass(SneakyTensor)])
def test_look_alikes_are_refused(fake):
    with pytest.raises(AssertionError, match="should be a torch.Tensor"):
        check_tensor(fake, torch.zeros(2))


def test_fastai_tensor_types_are_accepted():
    from fastai.torch_core import TensorImage
    check_tensor(TensorImage(torch.ones(2, 3)), torch.ones(2, 3))


def test_a_patched_allclose_does_not_help(monkeypatch):
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    with pytest.raises(AssertionError, match="wrong values"):
        check_tensor(torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("value, expected, message", [
    (torch.zeros(2, 1), torch.zeros(2), "shape"),
    (torch.zeros(2, dtype=torch.long), torch.zeros(2), "dtype"),
    (torch.tensor([float("nan"), 0.]), torch.zeros(2), "NaN"),
])
def test_check_tensor_says_what_is_wrong(value, expected, message):
    with pytest.raises(AssertionError, match=message):
        check_tensor(value, expected)


def test_check_tensor_compares_detached_values_on_the_cpu():
    x = torch.ones(2, requires_grad=True)
    check_tensor(x * 2, torch.full((2,), 2.0))
    assert not as_tensor(x * 2).requires_grad


def test_check_number_and_check_bool():
    check_number(torch.tensor(0.5), 0.5)
    check_number(3, 3.0)
    with pytest.raises(AssertionError, match="number"):
        check_number("0.5", 0.5)
    with pytest.raises(AssertionError, match="one number"):
        check_number(torch.zeros(2), 0.0)
    check_bool(True, True)
    for fake in (1, AlwaysEqual(), torch.tensor(True)):
        with pytest.raises(AssertionError, match="True or False"):
            check_bool(fake, True)
    with pytest.raises(AssertionError, match="expected False"):
        check_bool(True, False)


# ----------------------------------------------------------------------------- how an answer was written
def test_definition_is_the_last_top_level_binding_of_the_name():
    from course_utils.checks import definition
    cells = ["%matplotlib inline\nimport torch",
             "def f(x):\n    return x + x",
             "this is not python (",
             "class Helper:\n    def f(self):\n        return 'a method is not the answer'",
             "if False:\n    def f(x):\n        return 2 * x  # never runs: not the answer",
             "g = lambda x: x"]
    assert definition(cells, "f") == "def f(x):\n    return x + x"
    assert definition(cells, "g") == "g = lambda x: x"
    assert definition(cells + ["f: int = 3"], "f") == "f: int = 3"


def test_a_name_no_cell_defines_says_how_to_define_it():
    from course_utils.checks import definition
    with pytest.raises(AssertionError, match="no cell defines `f` with a `def` at the top level"):
        definition(["exec('def f(x): return x')", "def g():\n    def f(): pass"], "f")
    with pytest.raises(TypeError, match="the name of a function"):
        definition([], "f(x)")


def test_in_the_notebook_source_reads_the_kernels_history():
    from course_utils.checks import InProcess
    namespace = {"In": ["", "def f(x):\n    return x"], "f": lambda x: x}
    assert InProcess(namespace).source("f") == "def f(x):\n    return x"
