"""Deletion/insertion curves and sanity checks: exact values on hand-made models and maps, scipy as
the oracle for Spearman, and the sanity check's verdict on the default model."""
import math

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from course_utils import (cascading_randomization, curve_auc, deletion_auc, deletion_curve,
                          edge_map, gradcam, insertion_auc, insertion_curve, randomized_copy,
                          spearman)
from course_utils.faithfulness import blur, pixel_ranks
from course_utils.sanity import rank_with_ties
from test_hooks import n_hooks

W = torch.tensor([[4., 3.], [2., 1.]])


def pixel_model() -> nn.Sequential:
    """logit_0 = sum_ij W_ij x_ij, logit_1 = 0: p_0 = sigmoid(sum W x)."""
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([W.flatten(), torch.zeros(4)]))
    return nn.Sequential(nn.Flatten(), lin)


def sig(v):
    return torch.sigmoid(torch.tensor(v))


# ---------------------------------------------------------------- deletion and insertion
def test_deletion_and_insertion_curves_by_hand():
    model, x = pixel_model(), torch.ones(1, 1, 2, 2)
    # the map ranks the pixels 4, 3, 2, 1: one pixel a step on a 2x2 image
    assert torch.allclose(deletion_curve(model, x, W[None], 0, steps=4)[0], sig([10., 6., 3., 1., 0.]))
    assert torch.allclose(insertion_curve(model, x, W[None], 0, steps=4, baseline=torch.zeros_like(x))[0],
                          sig([0., 4., 7., 9., 10.]))
    # the reversed map deletes the least important pixel first: the curve falls slowly
    slow = deletion_curve(model, x, -W[None], 0, steps=4)[0]
    assert torch.allclose(slow, sig([10., 9., 7., 4., 0.]))
    assert deletion_auc(model, x, W[None], 0, steps=4) < deletion_auc(model, x, -W[None], 0, steps=4)
    assert deletion_curve(model, x, W[None], 1, steps=2)[0].tolist() == pytest.approx(
        (1 - sig([10., 3., 0.])).tolist(), abs=1e-6)


def test_curves_are_batched_and_do_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    x, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 4, 4)
    one = deletion_curve(model, x, maps, [0, 1, 2], steps=5, batch_size=1)
    many = deletion_curve(model, x, maps, [0, 1, 2], steps=5, batch_size=100)
    assert one.shape == (3, 6) and torch.allclose(one, many, atol=1e-6)
    alone = deletion_curve(model, x[1:2], maps[1:2], 1, steps=5)
    assert torch.allclose(alone[0], one[1], atol=1e-6)
    with torch.no_grad():
        p = model(x).softmax(1)
    assert torch.allclose(one[:, 0], p[[0, 1, 2], [0, 1, 2]], atol=1e-6)     # nothing deleted yet
    ins = insertion_curve(model, x, maps, [0, 1, 2], steps=5)
    assert torch.allclose(ins[:, -1], p[[0, 1, 2], [0, 1, 2]], atol=1e-6)    # everything back
    assert n_hooks(model) == 0


def test_curve_auc_is_the_trapezoid_rule():
    assert curve_auc(torch.tensor([1., 0.])).item() == pytest.approx(0.5)
    assert curve_auc(torch.tensor([[1., 1., 0.], [0., 0.5, 1.]])).tolist() == pytest.approx([0.75, 0.5])
    with pytest.raises(ValueError, match="at least two points"):
        curve_auc(torch.tensor([1.]))


def test_pixel_ranks_and_blur():
    r = pixel_ranks(torch.tensor([[[0., 2.], [2., 1.]]]), (2, 2))
    assert r.tolist() == [[[3, 0], [1, 2]]]                  # ties in reading order
    assert pixel_ranks(torch.rand(2, 3, 3), (12, 12)).shape == (2, 12, 12)
    x = torch.rand(2, 3, 16, 16)
    b = blur(x, 2.0)
    assert b.shape == x.shape and b.std() < x.std()
    assert torch.allclose(blur(torch.full((1, 1, 9, 9), 0.7)), torch.full((1, 1, 9, 9), 0.7))


@pytest.mark.parametrize("call, message", [
    (lambda m, x: deletion_curve(m, x, torch.ones(2, 2, 2), 0), "one map per image"),
    (lambda m, x: deletion_curve(m, x, torch.ones(1, 2, 2), 0, steps=0), "steps must be a positive int"),
    (lambda m, x: deletion_curve(m, x, torch.ones(1, 2, 2), 5), "out of range"),
    (lambda m, x: insertion_auc(m, x, torch.ones(1, 2, 2), 0, batch_size=0), "batch_size"),
])
def test_bad_curve_input_names_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call(pixel_model(), torch.ones(1, 1, 2, 2))


# ---------------------------------------------------------------- Spearman
def test_rank_with_ties_gives_average_ranks():
    assert rank_with_ties(torch.tensor([10., 30., 20., 30., 10.])).tolist() == [0.5, 3.5, 2., 3.5, 0.5]


def test_spearman_equals_scipy_with_ties():
    torch.manual_seed(0)
    a = torch.randint(0, 4, (3, 5, 6)).float()              # many ties
    b = a + torch.randint(0, 3, (3, 5, 6)).float()
    ours = spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-6)
    assert spearman(a[0], a[0] ** 3).item() == pytest.approx(1.0)   # monotone: rank-identical
    assert spearman(a[0], -a[0]).item() == pytest.approx(-1.0)


def test_spearman_of_a_constant_map_is_nan_and_shapes_are_checked():
    assert math.isnan(spearman(torch.zeros(3, 3), torch.rand(3, 3)).item())
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.rand(4, 4), torch.rand(2, 2))


# ---------------------------------------------------------------- randomisation
def test_randomized_copy_leaves_the_original_and_the_rng_alone():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Linear(4, 2)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    twin = randomized_copy(model, ["2", "0"], seed=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not torch.equal(twin[0].weight, model[0].weight)
    assert not torch.equal(twin[2][0].weight, model[2][0].weight)
    assert torch.equal(twin[1].weight, model[1].weight)              # not listed: kept
    again = randomized_copy(model, ["2", "0"], seed=3)
    assert torch.equal(again[0].weight, twin[0].weight)              # seeded
    with pytest.raises(ValueError, match="not a sub-module"):
        randomized_copy(model, ["7"])
    with pytest.raises(TypeError, match="list of sub-module names"):
        randomized_copy(model, "2")


def test_the_sanity_check_separates_gradcam_from_an_edge_map(learn, batch):
    """Grad-CAM's map changes as soon as the head is randomised; an edge map never does."""
    model = learn.model.eval()
    x, y = batch
    blocks = ["1", "0.4", "0.3"]
    grad = cascading_randomization(model, x, "0", y, blocks, method=gradcam)
    edges = cascading_randomization(model, x, "0", y, blocks, method=edge_map)
    assert grad.shape == edges.shape == (3, len(x))
    assert torch.allclose(edges, torch.ones_like(edges))
    assert grad.nan_to_num(0).abs().mean() < 0.5
    assert n_hooks(model) == 0


@pytest.fixture(scope="module")
def batch(learn):
    x, y = learn.dls.valid.one_batch()
    return x[:8].as_subclass(torch.Tensor), y[:8].as_subclass(torch.Tensor)


# ---------------------------------------------------------------- the ground-truth table
def test_score_methods_gives_one_row_per_method_and_layer():
    from course_utils.evaluate import COLUMNS, markdown_table, score_methods
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 3, 16, 16)
    boxes = [(0, 0, 15, 15)] * 3                              # the whole image: every peak is a hit
    rows = score_methods(model, x, [0, 1, 0], boxes, {"a": model[1], "b": model[3]}, steps=4)
    assert [(r["method"], r["layer"]) for r in rows] == [
        (m, l) for m in ("Grad-CAM", "Grad-CAM++", "LayerCAM", "Score-CAM") for l in ("a", "b")]
    for r in rows:
        assert list(r) == COLUMNS and r["pointing game"] == 1.0 and r["ms per image"] > 0
        assert r["energy in box"] in (0.0, pytest.approx(1.0))
        assert 0 <= r["deletion AUC"] <= 1 and 0 <= r["insertion AUC"] <= 1
    table = markdown_table(rows)
    assert table.count("\n") == 2 + len(rows) and "| Score-CAM | b | 1.000 |" in table
    with pytest.raises(TypeError, match="dict name -> layer"):
        score_methods(model, x, 0, boxes, [model[1]])
