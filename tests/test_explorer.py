"""The CAM explorer's logic without a browser: each control changes what is shown as it should,
maps agree with independent calls, a cached change runs no forward pass, and no hook is left."""
import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastai.vision.all import first
from PIL import Image

from course_utils import cam, gradcam, pointing_hits, upsample
from course_utils.explorer import Explorer, body_stages, explore, explore_grid

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
              "_load_state_dict_pre_hooks")


def all_hooks(model) -> int:
    """Every hook of every kind on every module of `model`, found recursively."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in HOOK_DICTS)


class ForwardCounter:
    """Counts calls of `model.forward` with a forward pre-hook; a context manager that removes it."""
    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(lambda m, i: setattr(self, "n", self.n + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def ranked(learn):
    """An explorer over the whole validation set, ordered by loss (read-only in the tests)."""
    return Explorer(learn)


@pytest.fixture
def small(learn):
    """A fresh explorer over three validation files (two cats, one dog), for tests that change it."""
    items = list(learn.dls.valid.items)
    cats = [f for f in items if f.name[0].isupper()][:2]
    dog = next(f for f in items if not f.name[0].isupper())
    return Explorer(learn, items=cats + [dog])


def batch_of(learn, item) -> torch.Tensor:
    x, = first(learn.dls.test_dl([item]))
    return x.as_subclass(torch.Tensor)


def test_validation_images_come_most_wrong_first(learn, ranked):
    assert len(ranked.items) == len(learn.dls.valid.items)
    assert ranked.losses == sorted(ranked.losses, reverse=True)
    # the losses are those of an independent forward pass on each image
    for i in (0, 1, len(ranked.items) - 1):
        with torch.no_grad():
            logits = learn.model(batch_of(learn, ranked.items[i]))
        want = F.cross_entropy(logits, torch.tensor([ranked.labels[i]])).item()
        assert ranked.losses[i] == pytest.approx(want, rel=1e-4, abs=1e-5)
    # the top one is wrong or nearly so, the last one confidently right
    assert ranked.losses[0] > 0.5 and ranked.losses[-1] < 0.05


def test_layer_control_changes_the_map_to_that_layers_gradcam(learn, small):
    x = batch_of(learn, small.items[0])
    stages = list(learn.model[0].children())
    assert list(small.layers) == [f"model[0][{i}]" for i in range(len(stages))]
    shapes = []
    for name, stage in zip(small.layers, stages):
        small.set_layer(name)
        want = gradcam(learn.model, x, stage, small.prediction)[0]
        assert torch.allclose(small.cam_map(), want, rtol=1e-4, atol=1e-6), name
        shapes.append(tuple(small.cam_map().shape))
    assert shapes == [(64, 64), (32, 32), (16, 16), (8, 8), (8, 8)]


def test_class_control_changes_the_map(learn, small):
    x = batch_of(learn, small.items[0])
    maps = {}
    for c in (0, 1):
        small.set_target(c)
        assert small.target == c
        maps[c] = small.cam_map().clone()
        assert torch.allclose(maps[c], gradcam(learn.model, x, learn.model[0][-1], c)[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[0], maps[1])
    small.set_target(None)
    assert small.target == small.prediction


def test_image_control_changes_the_prediction(learn, small):
    preds = []
    for i, item in enumerate(small.items):
        small.set_image(i)
        with torch.no_grad():
            probs = learn.model(batch_of(learn, item)).softmax(1)[0]
        assert torch.allclose(small.probabilities(), probs, atol=1e-5)
        preds.append(learn.dls.vocab[small.prediction])
    assert preds == [True, True, False]          # two cats then a dog, all recognised


def test_cam_method_is_the_exact_cam_and_stays_at_the_last_stage(learn, small):
    small.set_layer("model[0][1]")
    small.set_method("CAM")
    assert small.state.layer == "model[0][4]"
    x = batch_of(learn, small.items[0])
    assert torch.allclose(small.cam_map(), cam(learn.model, x, small.prediction)[0], atol=1e-5)
    with pytest.raises(ValueError, match="Grad-CAM"):
        small.set_layer("model[0][2]")


def test_cam_is_not_offered_for_fastais_default_head(learn, small):
    from fastai.vision.all import vision_learner
    from course_utils.model import compact_cnn
    default_head = vision_learner(learn.dls, compact_cnn, pretrained=False)
    ex = Explorer(default_head, items=small.items[:1])
    assert ex.methods == ["Grad-CAM"] and "hidden units" in ex.cam_problem
    with pytest.raises(ValueError, match="global-average-pool"):
        ex.set_method("CAM")


def test_a_cached_change_runs_no_forward_pass(learn, small):
    small.cam_map(); small.render()                 # image 0, predicted class: computed
    with ForwardCounter(learn.model) as count:
        for name in small.layers:
            small.set_layer(name); small.render()
        for a in (0.0, 0.3, 1.0):
            small.set_opacity(a); small.render()
        small.set_target(small.prediction); small.render()
        assert count.n == 0
        small.set_target(1 - small.prediction); small.render()
        assert count.n == 1                         # a new class: one gradcam call for all layers
        small.set_layer("model[0][0]"); small.set_target(None); small.render()
        assert count.n == 1
        small.set_image(2); small.render()
        assert count.n == 3                         # a new image: its probabilities, then one gradcam
        small.set_method("CAM"); small.render()
        assert count.n == 4                         # CAM: one pass of its own, then cached
        small.set_opacity(0.7); small.render()
        assert count.n == 4


def test_no_hook_is_left_after_many_updates_and_no_gradient_written(learn, small):
    before = all_hooks(learn.model)
    rng = random.Random(0)
    moves = [lambda: small.set_image(rng.randrange(len(small.items))),
             lambda: small.set_layer(rng.choice(list(small.layers))) if small.state.method != "CAM" else None,
             lambda: small.set_target(rng.choice([None, 0, 1])),
             lambda: small.set_opacity(rng.random()),
             lambda: small.set_method(rng.choice(small.methods))]
    for _ in range(60):
        rng.choice(moves)()
        small.render(); small.caption()
    assert all_hooks(learn.model) == before == 0
    assert all(p.grad is None for p in learn.model.parameters())
    assert not learn.model.training


def test_render_is_a_png_of_the_overlay_at_the_chosen_opacity(small):
    small.set_opacity(0.0)
    plain = np.asarray(Image.open(io.BytesIO(small.render(scale=1))))
    pic = small.picture()
    assert plain.shape == pic.shape
    inside = np.ones(pic.shape[:2], bool)           # outside the drawn box the image is untouched
    x0, y0, x1, y1 = small.box()
    inside[y0:y1 + 1, x0:x1 + 1] = False
    assert np.array_equal(plain[inside], pic[inside])
    small.set_opacity(0.8)
    covered = np.asarray(Image.open(io.BytesIO(small.render(scale=2))))
    assert covered.shape == (2 * pic.shape[0], 2 * pic.shape[1], 3)
    assert np.abs(covered[::2, ::2].astype(int) - pic).mean() > 10


def test_hit_is_the_pointing_game_on_the_head_box(learn, ranked):
    boxes = __import__("course_utils").load_boxes(__import__("course_utils").pets_path(False))
    ex = ranked
    for i in (0, 5):
        ex.set_image(i)
        box = boxes[ex.items[i].name]
        assert ex.box() == box                      # 128 px files, 128 px input: same pixels
        want = pointing_hits(upsample(ex.cam_map(), 128)[None], [box], 15 * 128 / 224)[0]
        assert ex.hit() == bool(want)
    ex.set_image(0)


def test_any_file_can_be_added(tmp_path, learn, small):
    img = Image.open(small.items[2]).transpose(Image.FLIP_LEFT_RIGHT)
    img.save(tmp_path / "flipped.png")
    i = small.add_image(tmp_path / "flipped.png")
    assert small.state.index == i == 3 and small.box() is None and small.hit() is None
    assert learn.dls.vocab[small.prediction] is False
    with pytest.raises(ValueError, match="not a file"):
        small.add_image(tmp_path / "missing.png")


@pytest.mark.parametrize("call, match", [
    (lambda ex: ex.set_layer("model[9]"), "unknown layer"),
    (lambda ex: ex.set_target(2), "class index"),
    (lambda ex: ex.set_target(True), "class index"),
    (lambda ex: ex.set_opacity(1.5), "between 0 and 1"),
    (lambda ex: ex.set_image(99), "image index"),
    (lambda ex: ex.set_method("Score-CAM"), "one of"),
])
def test_bad_control_values_are_refused_with_the_fix(small, call, match):
    before = small.state
    with pytest.raises(ValueError, match=match):
        call(small)
    assert small.state == before


def test_body_stages_refuses_a_model_without_a_body():
    with pytest.raises(ValueError, match="layers="):
        body_stages(torch.nn.Linear(2, 2))


def test_the_widget_is_a_thin_layer_over_the_explorer(learn, small):
    box = explore(learn, items=small.items)
    ex = box.explorer
    image = next(w for w in box.children[4].children if w.__class__.__name__ == "Image")
    layer = box.children[2].children[0]
    first_png = image.value
    layer.value = "model[0][1]"
    assert ex.state.layer == "model[0][1]" and image.value != first_png
    target = box.children[2].children[1]
    assert target.label == "predicted" and ex.state.target is None
    target.value = 1 - ex.prediction
    assert ex.target == 1 - ex.prediction
    target.value = -1
    assert ex.state.target is None
    method = box.children[1]
    method.value = "CAM"
    assert ex.state.layer == "model[0][4]" and layer.value == "model[0][4]" and layer.disabled


def test_static_grid_has_top_loss_images_by_layers(learn):
    fig = explore_grid(learn, n=2, layers=["model[0][1]", "model[0][4]"])
    axes = fig.get_axes()
    assert len(axes) == 4 and [a.get_title() for a in axes[:2]] == ["model[0][1]", "model[0][4]"]
    assert all_hooks(learn.model) == 0
    with pytest.raises(ValueError, match="positive int"):
        explore_grid(learn, n=0)


def test_text_explorer_shows_the_attributions_of_the_chosen_review_and_class():
    from torch import nn
    from course_utils.explorer import explore_text, text_view
    from course_utils.text import PAD

    class Bag(nn.Module):                         # score of class c: sum of the words' weights
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 1, padding_idx=PAD)
            with torch.no_grad():
                self.emb.weight.copy_(torch.tensor([[0.], [0.], [1.], [-2.], [0.5]]))

        def forward(self, ids):
            s = self.emb(ids).sum((1, 2))
            return torch.stack([-s, s], 1)

    def attribute(model, ids, target):            # exact: each word's weight, signed by the class
        w = model.emb(ids)[..., 0].detach()
        return w if target == 1 else -w

    vocab = ["<pad>", "<unk>", "good", "awful", "fine"]
    ids = torch.tensor([[2, 4, 0], [3, 2, 0], [2, 2, 4]])
    html = text_view(Bag(), ids[1], vocab, attribute, 1)
    assert "awful" in html and "<pad>" not in html and "rgba(200,0,0,1.00)" in html
    box = explore_text(Bag(), ids, vocab, attribute, labels=[1, 1, 0])
    review, target, out = box.children
    assert review.value == 2 and target.value == 0     # most wrong first: a clearly positive review labelled negative
    before = out.value
    target.value = 1
    assert out.value != before and out.value == box.show(2, 1)
    review.value = 1
    assert out.value == text_view(Bag(), ids[1], vocab, attribute, 1)


def test_the_latency_benchmark_drives_the_controls_it_names(learn):
    from benchmarks import explorer as bench
    box = explore(learn, items=list(learn.dls.valid.items[:2]))
    c = bench.controls(box)
    assert [c[k].description for k in ("image", "method", "layer", "class", "opacity")] == \
        ["image", "method", "layer", "class", "opacity"]
    samples = bench.measure(2)
    assert set(samples) == set(bench.TARGET_MS) and all(len(v) == 2 and min(v) > 0 for v in samples.values())
    assert all_hooks(learn.model) == 0
