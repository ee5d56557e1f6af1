"""Grad-CAM++, LayerCAM and Score-CAM on the shared core: exact weights on hand-set models, the
peers (pytorch-grad-cam, torch-cam) as oracles, and the core's guarantees for every method.

Where the peers differ from the paper or from each other, the test says which one we follow:
- Grad-CAM++: pytorch-grad-cam implements eq. 19 of the paper with 1e-6 added to the
  denominator; `gradcampp(..., eps=1e-6)` reproduces it, the default (eps=0) is the paper.
  torch-cam 0.5 divides a boolean-masked *copy* in place (`alpha[mask].div_(...)`), so its alpha
  stays g^2 and its weights are sum ReLU(g) g^2: not the paper; the test pins that.
- Score-CAM: both peers take the softmax over channels of the logits of the masked images
  (torch-cam subtracts the unmasked score first, which softmax ignores). The paper upsamples then
  rescales each map; pytorch-grad-cam does so with align_corners=True, torch-cam rescales at the
  layer's resolution and then upsamples with align_corners=False. We follow the paper's order with
  `course_utils.upsample` (align_corners=False); each peer is compared with that one step aligned.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from course_utils import (gradcam, gradcampp, gradcampp_weights, gradient_cam, layercam,
                          layercam_weights, scorecam, scorecam_weights, weighted_sum)
from course_utils.cam_variants import CAM_METHODS
from test_cam import HANDSET_X, handset_model
from test_hooks import n_hooks

METHODS = [gradcampp, layercam, scorecam]


# ---------------------------------------------------------------- exact values on hand-set models
def test_gradcampp_weights_by_hand():
    act = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 1.], [0., -1.]]]])     # sums 10 and 0
    grad = torch.tensor([[[[0.5, -1.], [0., 2.]], [[1., 1.], [1., 1.]]]])
    # alpha = 1 / (2 + g * sum A) where g != 0; weights = sum alpha * ReLU(g)
    w0 = 0.5 / (2 + 0.5 * 10) + 2 / (2 + 2 * 10)
    w1 = 4 * (1 / 2)
    assert torch.allclose(gradcampp_weights(act, grad), torch.tensor([[w0, w1]]))
    # with pytorch-grad-cam's epsilon: g^2 / (g^2 (2 + g sum A) + eps)
    eps = 1e-6
    e0 = 0.5 * .25 / (.25 * 7 + eps) + 2 * 4 / (4 * 22 + eps)
    assert torch.allclose(gradcampp_weights(act, grad, eps), torch.tensor([[e0, 4 * 1 / (2 + eps)]]))


def test_gradcampp_and_layercam_of_a_handset_model_are_exact():
    # d(logit_c)/d(act) = w_c / 4 everywhere (GAP over 2x2 then Linear)
    model = handset_model()
    act = 2 * HANDSET_X[0]                                   # [2, 2, 2]: sums 20 and 0
    g = torch.tensor([1., -1.]) / 4                          # class 2: Linear row (1, -1)
    alpha = torch.stack([1 / (2 + g[0] * act[0].sum()), 1 / (2 + g[1] * act[1].sum())])
    w = 4 * alpha * g.clamp_min(0)                           # 4 locations each
    expected = (w[:, None, None] * act).sum(0)
    assert torch.allclose(gradcampp(model, HANDSET_X, model[0], 2, relu=False)[0], expected)
    assert torch.allclose(layercam(model, HANDSET_X, model[0], 2, relu=False)[0], act[0] / 4)
    assert torch.allclose(layercam(model, HANDSET_X, model[0], 1, relu=False)[0], act[1] / 4)


def test_scorecam_of_a_handset_model_is_exact():
    model = handset_model()
    act = 2 * HANDSET_X[0]
    masks = []
    for a in act:                       # layer and image are both 2x2: upsampling is the identity
        masks.append((a - a.min()) / (a.max() - a.min()))
    with torch.no_grad():
        scores = torch.stack([model(HANDSET_X * m)[0, 0] for m in masks])
    w = torch.softmax(scores, 0)
    expected = (w[:, None, None] * act).sum(0).clamp_min(0)
    assert torch.allclose(scorecam(model, HANDSET_X, model[0], 0)[0], expected)


def test_scorecam_batches_do_not_change_the_weights():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = [scorecam(model, x, model.layer2, [0, 2], batch_size=b) for b in (1, 7, 300)]
    for m in maps[1:]:
        assert torch.allclose(m, maps[0], rtol=1e-4, atol=1e-6)


def test_a_constant_map_gets_an_all_zero_mask():
    model = handset_model()
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = 1.                        # channel 0 constant, channel 1 zero
    w = scorecam_weights(model.eval(), x, 2 * x, torch.tensor([0]))
    with torch.no_grad():
        zero = model(torch.zeros_like(x))[0, 0]
    # both masks are all zeros, so both scores are the blank image's: equal weights
    assert torch.allclose(w, torch.full((1, 2), 0.5)) and torch.isfinite(zero)


def test_weighted_sum_takes_channel_or_element_weights_and_names_the_shapes():
    act = torch.randn(2, 3, 4, 5)
    wc, we = torch.randn(2, 3), torch.randn(2, 3, 4, 5)
    assert torch.allclose(weighted_sum(wc, act, relu=False), (wc[:, :, None, None] * act).sum(1), atol=1e-6)
    assert torch.allclose(weighted_sum(we, act), (we * act).sum(1).clamp_min(0), atol=1e-6)
    with pytest.raises(ValueError, match=r"one per channel"):
        weighted_sum(torch.randn(3), act)


def test_a_new_method_is_one_small_function():
    """XGrad-CAM (Fu et al. 2020) in one line on the core: weights sum_ij g * A / sum A."""
    model = handset_model()
    xgrad = gradient_cam(model, HANDSET_X, model[0], 0,
                         lambda a, g: (g * a).sum((2, 3)) / (a.sum((2, 3)) + 1e-8), relu=False)
    act = 2 * HANDSET_X[0]
    assert torch.allclose(xgrad[0], act[0] / 4)       # channel 0 weight 1/4, channel 1 weight 0
    with pytest.raises(TypeError, match="weigh must be a function"):
        gradient_cam(model, HANDSET_X, model[0], 0, "mean")


# ---------------------------------------------------------------- oracles
def cases(learn, batch, size=96):
    """Both models, two layers each, four images with different targets (Score-CAM costs one
    forward per channel and image, so its cases use smaller images)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(4, 3, size, size)
    return [(learn.model.eval(), batch[:4], learn.model[0], [0, 1, 1, 0]),
            (learn.model.eval(), batch[:4], learn.model[0][-2], [1, 0, 1, 0]),
            (resnet, x, resnet.layer3, [0, 1, 2, 4]),
            (resnet, x, resnet.layer4, [4, 3, 2, 1])]


def pgc_raw(cls, model, x, layer, targets):
    """pytorch-grad-cam's map before its min-max scaling and resizing (ReLU applied, as it does)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    tg = [ClassifierOutputTarget(int(t)) for t in targets]
    method = cls(model=model, target_layers=[layer])
    try:
        method.forward(x, tg)
        acts = method.activations_and_grads.activations[0].cpu().numpy()
        grads = method.activations_and_grads.gradients
        grads = grads[0].cpu().numpy() if grads else None          # Score-CAM takes none
        with torch.no_grad():
            cam = method.get_cam_image(x, layer, tg, acts, grads, False)
        return torch.from_numpy(np.maximum(cam, 0)).float()
    finally:  # not release(): its in-place detach_ fails on some activations (views)
        for handle in method.activations_and_grads.handles:
            handle.remove()
        model.zero_grad(set_to_none=True)      # pytorch-grad-cam writes parameter grads


def torchcam_raw(cls, model, x, layer, targets, **kwargs):
    """torch-cam's map with `normalized=False` (ReLU applied, as it does)."""
    with cls(model, target_layer=layer, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
        scores = model(x)
        out = extractor(class_idx=list(targets), scores=scores, normalized=False)[0]
    model.zero_grad(set_to_none=True)
    return out.detach()


def close(ours, theirs):
    assert ours.shape == theirs.shape
    return torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * ours.abs().max().item())


def test_gradcampp_matches_pytorch_grad_cam_with_its_epsilon(learn, batch):
    from pytorch_grad_cam import GradCAMPlusPlus
    for model, x, layer, targets in cases(learn, batch):
        assert close(gradcampp(model, x, layer, targets, eps=1e-6), pgc_raw(GradCAMPlusPlus, model, x, layer, targets))


def test_gradcampp_is_the_paper_where_pytorch_grad_cams_epsilon_is_negligible():
    """Scaling the scores by 1e4 makes every |g| >> 1e-3: the epsilon no longer matters."""
    from pytorch_grad_cam import GradCAMPlusPlus
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    with torch.no_grad():
        resnet.fc.weight.mul_(1e4)
    x = torch.randn(4, 3, 64, 64)
    for layer in (resnet.layer3, resnet.layer4):
        ours = gradcampp(resnet, x, layer, [0, 1, 2, 4])
        assert close(ours, pgc_raw(GradCAMPlusPlus, resnet, x, layer, [0, 1, 2, 4]))


def test_torch_cams_gradcampp_is_not_the_paper(learn, batch):
    """torch-cam's alpha stays g^2 (its in-place division hits a masked copy): weights sum ReLU(g) g^2."""
    from torchcam.methods import GradCAMpp
    torchcam_pp = lambda a, g: (g.clamp_min(0) * g * g).sum((2, 3))
    for model, x, layer, targets in cases(learn, batch):
        theirs = torchcam_raw(GradCAMpp, model, x, layer, targets)
        assert close(gradient_cam(model, x, layer, targets, torchcam_pp), theirs)
        assert not close(gradcampp(model, x, layer, targets), theirs)


def test_layercam_matches_both_peers(learn, batch):
    from pytorch_grad_cam import LayerCAM as PgcLayerCAM
    from torchcam.methods import LayerCAM as TcLayerCAM
    for model, x, layer, targets in cases(learn, batch):
        ours = layercam(model, x, layer, targets)
        assert close(ours, pgc_raw(PgcLayerCAM, model, x, layer, targets))
        assert close(ours, torchcam_raw(TcLayerCAM, model, x, layer, targets))


def test_scorecam_matches_pytorch_grad_cam_with_the_same_upsampling(learn, batch, monkeypatch):
    """pytorch-grad-cam upsamples with nn.UpsamplingBilinear2d (align_corners=True); aligned to ours."""
    from pytorch_grad_cam import ScoreCAM
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d",
                        lambda size: (lambda t: F.interpolate(t, size=size, mode="bilinear",
                                                              align_corners=False)))
    for model, x, layer, targets in cases(learn, batch, size=48):
        assert close(scorecam(model, x, layer, targets), pgc_raw(ScoreCAM, model, x, layer, targets))


def test_scorecam_matches_torch_cam_with_the_papers_order(learn, batch, monkeypatch):
    """torch-cam rescales at the layer's resolution, then upsamples; aligned to the paper's order."""
    from torchcam.methods import ScoreCAM
    from course_utils.cam_variants import _masks
    monkeypatch.setattr(ScoreCAM, "_normalize", staticmethod(lambda cams, spatial_dims=None, eps=1e-8: cams))
    monkeypatch.setattr(ScoreCAM, "_upsample", lambda self, a: _masks(a[:, 0], tuple(self._input.shape[2:])))
    for model, x, layer, targets in cases(learn, batch, size=48):
        assert close(scorecam(model, x, layer, targets), torchcam_raw(ScoreCAM, model, x, layer, targets))


# ---------------------------------------------------------------- the core's guarantees, for every method
@pytest.mark.parametrize("method", METHODS)
def test_every_method_leaves_the_model_as_it_found_it(method):
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3)
    model.train()
    model.layer2.eval()
    modes = [m.training for m in model.modules()]
    stats = model.bn1.running_mean.clone()
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    maps = method(model, x, [model.layer3, model.layer4], [1, 2])
    assert [m.shape for m in maps] == [(2, 2, 2), (2, 1, 1)]
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.bn1.running_mean, stats)
    assert torch.equal(x, x0) and torch.is_grad_enabled()
    assert n_hooks(model) == 0


@pytest.mark.parametrize("method", METHODS)
def test_several_layers_in_one_call_equal_separate_calls(method):
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    together = method(model, x, [model.layer1, model.layer2], [1, 2])
    for layer, m in zip([model.layer1, model.layer2], together):
        assert torch.allclose(m, method(model, x, layer, [1, 2]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("call, error, message", [
    (lambda f, m, x: f(m, x, nn.Conv2d(3, 3, 1), 0), ValueError, "not part of the model"),
    (lambda f, m, x: f(m, x, m.fc, 0), ValueError, "not a spatial map"),
    (lambda f, m, x: f(m, x, m.layer4, 3), ValueError, r"out of range"),
    (lambda f, m, x: f(m, x, m.layer4, [0, 1, 2]), ValueError, "3 targets for 2 images"),
    (lambda f, m, x: f(m, x[0], m.layer4, 0), ValueError, r"x\[None\]"),
])
def test_every_method_names_the_fix(method, call, error, message):
    torch.manual_seed(5)
    model, x = torchvision.models.resnet18(num_classes=3).eval(), torch.randn(2, 3, 32, 32)
    with pytest.raises(error, match=message):
        call(method, model, x)
    assert n_hooks(model) == 0


def test_method_options_are_checked():
    model = handset_model()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        scorecam(model, HANDSET_X, model[0], 0, batch_size=0)
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        gradcampp(model, HANDSET_X, model[0], 0, eps=-1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="layercam needs gradients"):
        layercam(model, HANDSET_X, model[0], 0)
    with torch.no_grad():               # Score-CAM needs no gradient
        assert scorecam(model, HANDSET_X, model[0], 0).shape == (1, 2, 2)


def test_the_registry_names_every_method():
    assert list(CAM_METHODS) == ["Grad-CAM", "Grad-CAM++", "LayerCAM", "Score-CAM"]
    assert CAM_METHODS["Grad-CAM"] is gradcam


@pytest.fixture(scope="module")
def batch(learn):
    x, _ = learn.dls.valid.one_batch()
    return x[:8].as_subclass(torch.Tensor)
