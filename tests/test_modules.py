"""A model's modules: the walk, and eval mode for a block with every flag restored."""
import pytest
import torch
from torch import nn

from course_utils.modules import eval_mode, restore_training, submodules, switch_to_eval


def _model() -> nn.Module:
    shared = nn.Linear(2, 2)
    body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout())
    return nn.Sequential(body, shared, nn.ReLU(), shared)


def test_submodules_are_model_modules_with_repeats():
    model = _model()
    model.add_module("empty", None)
    expected = [id(m) for m in model.modules()]
    found = [id(m) for m in submodules(model)]
    assert sorted(found) == sorted(expected + [id(model[1])])     # the shared Linear twice


def test_eval_mode_restores_each_flag_even_when_the_block_raises():
    model = _model()
    model[0][1].eval()                                                # a half-frozen model
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(submodules(model)):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before


def test_switch_to_eval_returns_what_restore_training_puts_back():
    model = _model()
    model[0].eval()
    training = switch_to_eval(submodules(model))
    assert not any(m.training for m in model.modules())
    assert {id(m) for m in training} == {id(m) for m in model.modules() if m not in list(model[0].modules())}
    restore_training(training)
    assert not model[0].training and model[1].training


@pytest.mark.parametrize("call", [lambda: submodules([nn.Linear(1, 1)]),
                                  lambda: switch_to_eval(nn.Linear(1, 1))])
def test_a_model_and_a_list_of_modules_are_not_mixed_up(call):
    with pytest.raises(TypeError):
        call()
