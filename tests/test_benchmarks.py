"""The benchmark compares like with like: every method computes the same maps, leaves no hook
behind, and the statistics it reports are the ones it claims."""
import math
import random
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks import gradcam as bench
from test_hooks import n_hooks


def maps_of(name, model, layer, x, t, cam="gradcam"):
    call, close = bench.make_method(name, model, layer, cam)
    try:
        out = call(x, t)
    finally:
        close()
    out = torch.as_tensor(out[0] if isinstance(out, list) else out)  # torch-cam: one per layer
    return out.reshape(x.shape[0], *out.shape[-2:]).detach().float()


@pytest.mark.parametrize("layer_name", ["layer4", "layer3"])
def test_every_method_computes_the_same_maps(layer_name):
    model, layer, x, t = bench.build_case("resnet18", layer_name, 2)
    x = x[:, :, :64, :64]                  # small, same model
    ours = maps_of("course_utils", model, layer, x, t)
    assert torch.allclose(maps_of("captum", model, layer, x, t), ours, rtol=1e-4, atol=1e-6)
    assert torch.allclose(maps_of("torch-cam", model, layer, x, t), ours, rtol=1e-4, atol=1e-6)
    # pytorch-grad-cam returns its map resized to the input and scaled to [0, 1] per image
    resized = F.interpolate(ours[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
    lo, hi = resized.flatten(1).min(1).values, resized.flatten(1).max(1).values
    scaled = (resized - lo[:, None, None]) / (hi - lo)[:, None, None]
    assert torch.allclose(maps_of("pytorch-grad-cam", model, layer, x, t), scaled, atol=2e-2)
    floor_grad = bench.floor(model, x, layer, t)
    assert floor_grad.shape[-2:] == ours.shape[-2:]
    assert n_hooks(model) == 0


@pytest.mark.parametrize("cam", ["gradcampp", "layercam", "scorecam"])
def test_every_method_of_the_family_is_timed_against_both_peers(cam):
    """Each implementation of each method runs, leaves no hook; torch-cam's raw maps are ours
    for LayerCAM (Grad-CAM++ and Score-CAM differ by design: see tests/test_cam_variants.py)."""
    model, layer, x, t = bench.build_case("toy", "last", 2)
    assert bench.FAMILY[cam][-2:] == ["pytorch-grad-cam", "torch-cam"]
    for name in bench.FAMILY[cam]:
        seconds, _ = bench.sample(name, model, layer, x, t, calls=1, cam=cam)
        assert seconds > 0 and n_hooks(model) == 0
    if cam == "layercam":
        model, layer, x, t = bench.build_case("resnet18", "layer3", 2)
        x = x[:, :, :64, :64]
        ours = maps_of("course_utils", model, layer, x, t, cam)
        assert torch.allclose(maps_of("torch-cam", model, layer, x, t, cam), ours, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="captum"):
        bench.make_method("captum", model, layer, cam)


def test_a_sample_leaves_no_hook_and_reports_time_and_memory():
    model, layer, x, t = bench.build_case("toy", "last", 1)
    for name in bench.NAMES:
        seconds, peak_mb = bench.sample(name, model, layer, x, t, calls=3)
        assert seconds > 0
        assert math.isfinite(peak_mb) or sys.platform != "linux"   # /proc is Linux's
        assert n_hooks(model) == 0
        assert all(p.grad is None for p in model.parameters()) or name == "pytorch-grad-cam"


def test_median_interval_uses_the_binomial_order_statistics():
    values = list(range(21))
    random.Random(0).shuffle(values)
    assert bench.median_interval(values) == (5, 15)      # 2 P(Bin(21, 1/2) <= 5) = 0.027 <= 0.05
    assert bench.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few rounds: the whole range
    assert bench.median_interval([1.0]) == (1.0, 1.0)


def test_summary_ratios_pair_methods_within_a_round():
    # ours is always 0.9x captum within a round, while the machine's speed drifts 3x across rounds
    rounds = [{"floor": s, "course_utils": 0.9 * s, "captum": s, "pytorch-grad-cam": 3 * s,
               "torch-cam": 1.1 * s} for s in (1.0, 3.0, 1.0, 3.0, 2.0)]
    t = bench.summarize(rounds)
    assert t["ours/peer"] == pytest.approx(0.9) and t["ours/floor"] == pytest.approx(0.9)
    assert t["course_utils"] == pytest.approx(1.8)      # the median of the drifting times
    no_floor = bench.summarize([{k: v for k, v in r.items() if k != "floor"} for r in rounds])
    assert math.isnan(no_floor["ours/floor"]) and no_floor["ours/peer"] == pytest.approx(0.9)


def test_the_grading_benchmark_reads_marginal_and_fixed_cost_from_the_6_and_24_student_rows():
    """Marginal = (t24 - t6) / 18 notebooks; fixed = t - notebooks x marginal, per way of grading."""
    from benchmarks import grading
    row = lambda name, n, nbgrader, cold, warm: {"name": name, "notebooks": n, "nbgrader": nbgrader,  # noqa: E731
                                                  "cold": cold, "warm": warm, "floor": n / 2, "same": True}
    text = grading.table([row("one lesson × 6", 6, 66.0, 14.0, 8.0), row("one lesson × 24", 24, 246.0, 32.0, 26.0)],
                         2, None)
    assert "| one lesson × 6 | 6 | 66.0 s | 14.0 s | 8.0 s | 4.7× | 8.2× | 4.67× | 2.67× | 3.0 s | yes |" in text
    assert "nbgrader: marginal 10.00 s / notebook; fixed cost of a call 6.0 s (from × 6), 6.0 s (from × 24)" in text
    assert "warm: marginal 1.00 s / notebook; fixed cost of a call 2.0 s (from × 6), 2.0 s (from × 24)" in text
