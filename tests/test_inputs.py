"""A classifier's inputs: the batch and the target classes, checked with the fix in the message."""
import pytest
import torch
from fastai.torch_core import TensorCategory
from torch import nn

from course_utils.inputs import check_batch, target_indices


def test_a_good_batch_passes():
    assert check_batch(nn.Identity(), torch.zeros(2, 3, 4, 4)) is None


@pytest.mark.parametrize("model, x, error, message", [
    ("model", torch.zeros(1, 3, 4, 4), TypeError, "nn.Module"),
    (nn.Identity(), [[0.0]], TypeError, "tensor batch"),
    (nn.Identity(), torch.zeros(3, 4, 4), ValueError, r"x\[None\]"),
])
def test_a_bad_batch_is_named(model, x, error, message):
    with pytest.raises(error, match=message):
        check_batch(model, x)


@pytest.mark.parametrize("targets, expected", [
    (1, [1, 1, 1]), ([0, 2, 1], [0, 2, 1]), (torch.tensor([2, 0, 0]), [2, 0, 0]),
    (TensorCategory([1, 1, 0]), [1, 1, 0]),
])
def test_targets_become_one_long_index_per_image(targets, expected):
    t = target_indices(targets, 3, 3, "cpu")
    assert type(t) is torch.Tensor and t.dtype == torch.long and t.tolist() == expected


@pytest.mark.parametrize("targets, error, message", [
    (True, TypeError, "int or one int per image"), ("cat", TypeError, "int or one int per image"),
    (1.0, TypeError, "int or one int per image"), ([0, 1], ValueError, "2 targets for 3 images"),
    (3, ValueError, r"out of range.*0\.\.2"), (-1, ValueError, "out of range"),
])
def test_bad_targets_are_named(targets, error, message):
    with pytest.raises(error, match=message):
        target_indices(targets, 3, 3, "cpu")
