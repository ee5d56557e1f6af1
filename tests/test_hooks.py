"""Hook, HookBwd, Hooks: what they store, and that they never outlive their `with` block."""
import warnings

import pytest
import torch
import torchvision
from torch import nn

from course_utils import Hook, HookBwd, Hooks


def n_hooks(module: nn.Module) -> int:
    """How many forward/backward hooks are registered anywhere in `module`."""
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               for m in module.modules())


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


def test_hook_stores_a_detached_copy_of_the_output(net):
    x = torch.randn(2, 3, 8, 8)
    with Hook(net[2]) as h:
        net(x)
    expected = net[2](net[1](net[0](x)))
    assert torch.equal(h.stored, expected)
    assert not h.stored.requires_grad
    assert h.stored.data_ptr() != expected.data_ptr()


def test_stored_value_is_safe_from_later_in_place_ops():
    """Is the stored activation the value the layer returned, even if ReLU(inplace) runs after it?"""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = torch.randn(1, 3, 6, 6)
    with Hook(net[0]) as h:
        net(x)
    assert (h.stored < 0).any()  # the ReLU that ran afterwards did not touch the copy
    assert torch.equal(h.stored, net[0](x))


def test_no_hook_left_after_normal_exit(net):
    with Hook(net[0]) as h:
        assert n_hooks(net) == 1
    assert n_hooks(net) == 0 and h.removed


def test_no_hook_left_when_the_body_raises(net):
    with pytest.raises(ZeroDivisionError):
        with Hook(net[0]), HookBwd(net[2]), Hooks([net[0], net[2]]):
            assert n_hooks(net) == 4
            1 / 0
    assert n_hooks(net) == 0


def test_remove_is_idempotent_and_the_hook_stops_firing(net):
    h = Hook(net[0])
    h.remove()
    h.remove()
    net(torch.randn(1, 3, 8, 8))
    assert h.stored is None and n_hooks(net) == 0


def test_hookbwd_gradient_equals_autograd_grad(net):
    x = torch.randn(3, 3, 8, 8)
    with HookBwd(net[2]) as hb, Hook(net[2]) as hf:
        out = net(x)
        out[:, 1].sum().backward()
    act = net[2](net[1](net[0](x)))
    expected, = torch.autograd.grad(net[5](net[4](net[3](act)))[:, 1].sum(), act)
    assert torch.allclose(hb.stored, expected, atol=1e-7)
    assert hb.stored.shape == hf.stored.shape


@pytest.mark.parametrize("name", ["layer3", "layer4.0.conv1", "layer4.1.bn2"])
def test_hookbwd_survives_in_place_ops_without_warnings(resnet, name):
    """torchvision's ReLU(inplace) and `out += identity` break register_full_backward_hook."""
    layer = resnet.get_submodule(name)
    x = torch.randn(2, 3, 64, 64)
    captured = {}

    def keep(m, i, o):  # independent reference: the rest of the net gets a copy
        captured["out"] = o
        return o.clone()

    handle = layer.register_forward_hook(keep)
    expected, = torch.autograd.grad(resnet(x)[:, 2].sum(), captured["out"])
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with HookBwd(layer) as hb:
            resnet(x)[:, 2].sum().backward()
    assert torch.allclose(hb.stored, expected, atol=1e-6)
    assert n_hooks(resnet) == 0


def test_hookbwd_under_no_grad_stores_nothing(net):
    with HookBwd(net[0]) as hb, torch.no_grad():
        net(torch.randn(1, 3, 8, 8))
    assert hb.stored is None


def test_hooks_store_one_output_per_module_in_order(net):
    x = torch.randn(1, 3, 8, 8)
    with Hooks([net[0], net[2], net[5]]) as hs:
        out = net(x)
    assert len(hs) == 3
    assert [s.shape for s in hs.stored] == [(1, 4, 6, 6), (1, 5, 4, 4), (1, 2)]
    assert torch.equal(hs.stored[-1], out.detach())
    assert n_hooks(net) == 0


def test_hooks_take_backward_hooks_too(net):
    with Hooks([net[0], net[2]], hook_cls=HookBwd) as hs:
        net(torch.randn(1, 3, 8, 8)).sum().backward()
    assert [s.shape for s in hs.stored] == [(1, 4, 6, 6), (1, 5, 4, 4)]


def test_a_bad_module_midway_leaves_no_hooks_behind(net):
    with pytest.raises(TypeError, match="nn.Module"):
        Hooks([net[0], net[2], "not a layer"])
    assert n_hooks(net) == 0


@pytest.mark.parametrize("cls", [Hook, HookBwd])
def test_a_non_module_is_refused_with_the_fix(cls):
    with pytest.raises(TypeError, match=r"learn\.model\[0\]"):
        cls(torch.zeros(3))
