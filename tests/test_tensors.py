"""fastai tensors as plain tensors."""
import pytest
import torch
from fastai.torch_core import TensorCategory, TensorImage

from course_utils.tensors import plain


def test_a_plain_tensor_is_returned_as_is():
    t = torch.ones(2)
    assert plain(t) is t


@pytest.mark.parametrize("kind", [TensorImage, TensorCategory])
def test_a_fastai_tensor_becomes_plain_with_the_same_data_and_graph(kind):
    leaf = torch.ones(1, 3, 2, 2, requires_grad=True)
    t = plain(kind(leaf * 2))
    assert type(t) is torch.Tensor
    assert torch.equal(t, torch.full((1, 3, 2, 2), 2.0))
    t.sum().backward()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 2.0))


def test_a_non_tensor_is_refused():
    with pytest.raises(TypeError, match="expected a tensor"):
        plain([1, 2])
