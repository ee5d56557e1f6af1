"""CAM, book_cam and gradcam: exact values, exact identities, independent oracles, no side effects."""
import gc
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from course_utils import (book_cam, cam, energy_in_box, gradcam, normalize, pointing_game,
                          pointing_hits, upsample)
from test_hooks import n_hooks


# ---------------------------------------------------------------- tiny models with exact answers
def handset_model() -> nn.Sequential:
    """1×1 conv doubling 2 channels, then GAP → Linear with hand-set weights and bias."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.copy_(2 * torch.eye(2)[:, :, None, None])
        lin.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [1., -1.]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5, 0.]))
    return nn.Sequential(nn.Sequential(conv), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin))


HANDSET_X = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 1.], [0., -1.]]]])  # [1, 2, 2, 2]


def test_cam_of_a_handset_model_is_exact():
    act = 2 * HANDSET_X[0]                                   # what the 1×1 conv returns
    assert torch.equal(cam(handset_model(), HANDSET_X, 2)[0], act[0] - act[1])
    assert torch.equal(cam(handset_model(), HANDSET_X, 0)[0], act[0])


def test_gradcam_of_a_handset_model_is_exact():
    # d(logit_c)/d(act) = w_c / (h·w) everywhere, so Grad-CAM = (w_c · act) / 4
    model = handset_model()
    act = 2 * HANDSET_X[0]
    expected = (act[0] - act[1]) / 4
    assert torch.allclose(gradcam(model, HANDSET_X, model[0], 2, relu=False)[0], expected)
    assert torch.allclose(gradcam(model, HANDSET_X, model[0], 2)[0], expected.clamp_min(0))


def test_book_cam_is_the_chapter_einsum():
    act, w = torch.randn(5, 3, 4), torch.randn(2, 5)
    expected = (w[:, :, None, None] * act[None]).sum(1)
    assert torch.allclose(book_cam(act, w), expected, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        book_cam(act, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"hook.stored\[0\]"):
        book_cam(act[None], w)


# ---------------------------------------------------------------- exact identities on the default model
def test_cam_mean_plus_bias_is_the_logit(learn, batch):
    model = learn.model
    with torch.no_grad():
        logits = model.eval()(batch)
    for c in range(logits.shape[1]):
        maps = cam(model, batch, c)
        assert torch.allclose(maps.mean((1, 2)) + model[1][-1].bias[c], logits[:, c], atol=1e-5)


def test_gradcam_at_the_body_is_cam_over_locations(learn, batch):
    model = learn.model
    targets = torch.arange(len(batch)) % 2
    g = gradcam(model, batch, model[0], targets, relu=False)
    c = cam(model, batch, targets)
    h, w = c.shape[-2:]
    assert torch.allclose(g, c / (h * w), atol=1e-6)


def test_book_cam_equals_cam_on_the_default_head(learn, batch):
    from course_utils import Hook
    model = learn.model.eval()
    with Hook(model[0]) as hook, torch.no_grad():
        model(batch[:1])
    assert torch.allclose(book_cam(hook.stored[0], model[1][-1].weight)[1], cam(model, batch[:1], 1)[0],
                          atol=1e-5)


def test_fastai_batches_work_and_give_plain_maps(learn):
    """A TensorImage batch with TensorCategory targets, straight from the DataLoaders."""
    x, y = learn.dls.valid.one_batch()
    for maps in (gradcam(learn.model, x[:4], learn.model[0], y[:4]), cam(learn.model, x[:4], y[:4])):
        assert type(maps) is torch.Tensor and maps.shape == (4, 8, 8)


# ---------------------------------------------------------------- oracles: captum and pytorch-grad-cam
def captum_gradcam(model, x, layer, targets):
    from captum.attr import LayerGradCam
    return LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)[:, 0]


def pytorch_grad_cam_raw(model, x, layer, targets):
    """pytorch-grad-cam's map before its min-max scaling and resizing."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    tg = [ClassifierOutputTarget(int(t)) for t in targets]
    method = GradCAM(model=model, target_layers=[layer])
    try:
        method.forward(x, tg)
        acts = method.activations_and_grads.activations[0].cpu().numpy()
        grads = method.activations_and_grads.gradients[0].cpu().numpy()
        return torch.from_numpy(np.maximum(method.get_cam_image(x, layer, tg, acts, grads), 0))
    finally:  # not release(): its in-place detach_ fails on some activations (views)
        for handle in method.activations_and_grads.handles:
            handle.remove()


def oracle_cases(learn, batch):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(4, 3, 96, 96)
    return [(learn.model.eval(), batch[:4], learn.model[0], [0, 1, 1, 0]),
            (learn.model.eval(), batch[:4], learn.model[0][-2], [1, 0, 1, 0]),
            (resnet, x, resnet.layer3, [0, 1, 2, 4]),
            (resnet, x, resnet.layer4, [4, 3, 2, 1])]


@pytest.mark.parametrize("oracle", [captum_gradcam, pytorch_grad_cam_raw])
def test_gradcam_matches_the_oracles(learn, batch, oracle):
    for model, x, layer, targets in oracle_cases(learn, batch):
        ours = gradcam(model, x, layer, targets)
        theirs = oracle(model, x, layer, targets)
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam writes parameter grads
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * ours.abs().max().item())


# ---------------------------------------------------------------- the in-place case and several layers
@pytest.mark.parametrize("name", ["layer3", "layer4.0.conv1", "layer4.1.bn2"])
def test_gradcam_is_right_when_the_output_is_changed_in_place(name):
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=3).eval()
    layer = model.get_submodule(name)
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = gradcam(model, x, layer, [0, 2], relu=False)
    theirs = captum_gradcam(model, x, layer, [0, 2])
    assert torch.allclose(ours.clamp_min(0), theirs, atol=1e-6)


def test_several_layers_in_one_pass_equal_separate_calls(monkeypatch):
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=3).eval()
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    x = torch.randn(2, 3, 64, 64)
    separate = [gradcam(model, x, layer, [1, 2]) for layer in layers]

    forwards, backwards = [], []
    model.register_forward_hook(lambda *a: forwards.append(1))
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or real_grad(*a, **k))
    together = gradcam(model, x, layers, [1, 2])
    assert (len(forwards), len(backwards)) == (1, 1)
    assert [m.shape for m in together] == [(2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 2, 2)]
    for a, b in zip(together, separate):
        assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------- side effects
def test_gradcam_leaves_the_model_and_input_as_it_found_them():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3)
    model.train()
    model.layer2.eval()                       # a mixed state must come back exactly
    model.fc.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    stats = model.bn1.running_mean.clone()
    x = torch.randn(2, 3, 64, 64)
    x0 = x.clone()
    gradcam(model, x, [model.layer3, model.layer4], 1)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.bn1.running_mean, stats)   # ran in eval mode: no BN update
    assert torch.equal(x, x0) and not x.requires_grad
    assert n_hooks(model) == 0


def test_gradcam_builds_no_graph_before_the_layer_and_restores_grad_mode():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3).eval()
    seen = {}
    for name in ("layer1", "layer2", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (torch.is_grad_enabled(), o.requires_grad)))
    gradcam(model, torch.randn(1, 3, 32, 32), model.layer2, 0)
    assert seen["layer1"] == (False, False)   # before the layer: nothing recorded
    assert seen["layer2"] == (False, False)   # its own output: the hook turns gradients on after it
    assert seen["layer4"] == (True, True)     # after the layer: the graph Grad-CAM needs
    assert torch.is_grad_enabled()


def test_grad_mode_modes_and_hooks_are_restored_when_the_model_raises():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(5, 2))   # wrong Linear size
    assert model.training
    with pytest.raises(RuntimeError):
        gradcam(model, torch.randn(1, 3, 4, 4), model[0], 0)
    assert torch.is_grad_enabled() and n_hooks(model) == 0
    assert all(m.training for m in model.modules())


class SideBranch(nn.Module):
    """A model with a layer that runs but does not reach the scores."""
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))

    def forward(self, x):
        self.unused(x)
        return self.head(self.used(x))


@pytest.mark.parametrize("layers", [lambda m: m.unused, lambda m: [m.used, m.unused]])
def test_a_layer_that_does_not_reach_the_scores_is_named(layers):
    model = SideBranch()
    with pytest.raises(ValueError, match="do not depend on the output of Conv2d"):
        gradcam(model, torch.randn(1, 3, 4, 4), layers(model), 0)
    assert n_hooks(model) == 0


def test_gradcam_works_on_a_frozen_model():
    model = handset_model().requires_grad_(False)
    m = gradcam(model, HANDSET_X, model[0], 0, relu=False)
    assert torch.allclose(m[0], 2 * HANDSET_X[0, 0] / 4)
    assert not any(p.requires_grad for p in model.parameters())


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns of deprecations
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_two_hundred_calls_leave_no_hook_and_no_growing_state():
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    gradcam(model, x, model.layer4, 0)
    before = live_tensors()
    for i in range(200):
        gradcam(model, x, [model.layer3, model.layer4], i % 3)
    assert n_hooks(model) == 0
    assert live_tensors() <= before
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small():
    torch.manual_seed(5)
    return torchvision.models.resnet18(num_classes=3).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, x: gradcam(m, x, nn.Conv2d(3, 3, 1), 0), ValueError, "not part of the model"),
    (lambda m, x: gradcam(m, x, m.fc, 0), ValueError, "not a spatial map"),
    (lambda m, x: gradcam(m, x, m.layer4, 3), ValueError, r"out of range.*0\.\.2"),
    (lambda m, x: gradcam(m, x, m.layer4, -1), ValueError, "out of range"),
    (lambda m, x: gradcam(m, x, m.layer4, [0, 1, 2]), ValueError, "3 targets for 2 images"),
    (lambda m, x: gradcam(m, x, m.layer4, [0.5, 1.0]), TypeError, "int"),
    (lambda m, x: gradcam(m, x, m.layer4, "cat"), TypeError, "int"),
    (lambda m, x: gradcam(m, x[0], m.layer4, 0), ValueError, r"4-D.*x\[None\]"),
    (lambda m, x: gradcam(m, x.numpy(), m.layer4, 0), TypeError, "tensor"),
    (lambda m, x: gradcam(m, x, [], 0), ValueError, "at least one layer"),
    (lambda m, x: gradcam(m, x, m.layer4[0].relu, 0), ValueError, "runs exactly once"),
    (lambda m, x: cam(m, x[0], 0), ValueError, "4-D"),
])
def test_bad_input_gets_an_error_that_names_the_fix(small, call, error, message):
    model, x = small
    with pytest.raises(error, match=message):
        call(model, x)
    assert n_hooks(model) == 0


def test_gradcam_under_no_grad_says_what_to_do(small):
    model, x = small
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        gradcam(model, x, model.layer4, 0)


def test_cam_explains_why_fastais_default_head_is_not_a_cam():
    from fastai.vision.all import create_head
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 512, 3, stride=4), nn.ReLU()),
                          create_head(512, 2)).eval()
    assert model[1][-1].weight.shape == (2, 512)          # the sizes coincide ...
    with pytest.raises(ValueError, match="512 hidden units"):
        cam(model, torch.randn(2, 3, 32, 32), 1)          # ... but it is not a CAM


def test_cam_works_on_torchvision_resnets_and_equals_scaled_gradcam(small):
    model, x = small
    c = cam(model, x, [0, 2])
    g = gradcam(model, x, model.layer4, [0, 2], relu=False)
    assert torch.allclose(g, c / (c.shape[-1] * c.shape[-2]), atol=1e-6)


def test_cam_refuses_a_model_without_gap_linear():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ValueError, match="global-average-pool"):
        cam(model, torch.randn(1, 3, 8, 8), 0)


# ---------------------------------------------------------------- resizing, scaling, scoring
def test_upsample_and_normalize():
    m = torch.tensor([[[0., 1.], [2., 3.]], [[5., 5.], [5., 5.]]])
    up = upsample(m, 8)
    assert up.shape == (2, 8, 8) and upsample(m[0], (4, 6)).shape == (4, 6)
    assert torch.allclose(up[1], torch.full((8, 8), 5.))
    n = normalize(m)
    assert torch.equal(n[0], m[0] / 3) and torch.equal(n[1], torch.zeros(2, 2))
    assert not torch.isnan(normalize(torch.zeros(3, 3))).any()
    with pytest.raises(ValueError, match=r"\[N,h,w\]"):
        normalize(torch.zeros(1, 1, 2, 2))


def test_pointing_game_and_energy_in_box():
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 3] = 1      # peak at x=3, y=2: inside box 0
    maps[1, 9, 9] = 1      # peak at x=9, y=9: 5 px from box 1 horizontally and vertically
    maps[2, 0, 0] = 1      # peak at x=0, y=0: 1 px from box 2
    boxes = [(1, 1, 4, 4), (0, 0, 4, 4), (1, 1, 3, 3)]
    assert pointing_hits(maps, boxes, tolerance=0).tolist() == [True, False, False]
    assert pointing_hits(maps, boxes, tolerance=1.5).tolist() == [True, False, True]
    assert pointing_game(maps, boxes, tolerance=1.5) == pytest.approx(2 / 3)
    maps[0, 8, 8] = 3
    assert energy_in_box(maps, boxes).tolist() == pytest.approx([0.25, 0., 0.])
    with pytest.raises(ValueError, match="2 boxes for 3 maps"):
        pointing_game(maps, boxes[:2])


@pytest.fixture(scope="module")
def batch(learn):
    """Eight validation images of the default model, on its device, as a plain tensor."""
    x, _ = learn.dls.valid.one_batch()
    return x[:8].as_subclass(torch.Tensor)
