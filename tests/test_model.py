"""The default offline model: its layout, its accuracy, where it looks, and its cache."""
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from course_utils import data
from course_utils.model import (CHANNELS, compact_cnn, get_learner, model_cache_file,
                                train_config)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A fastai tensor subclass (TensorImage, TensorCategory) as a plain torch.Tensor."""
    return t.as_subclass(torch.Tensor)


@contextmanager
def _evaluating(model: nn.Module):
    """Eval mode for the block, then the previous mode: a forward in train mode would move BN stats."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


# ---------------------------------------------------------------- architecture
def test_compact_cnn_is_cut_at_the_pool():
    """Does fastai's create_body keep the stem and four stages and drop pool, flatten and Linear?"""
    from fastai.vision.all import create_body
    body = create_body(compact_cnn(), pretrained=False)
    assert len(body) == 5
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Linear)) for m in body.modules())


def test_compact_cnn_has_no_pretrained_weights():
    """Does asking for pretrained weights raise a ValueError that names the fix?"""
    with pytest.raises(ValueError, match="pretrained=False"):
        compact_cnn(pretrained=True)


def test_learner_layout_matches_the_chapter(learn):
    """Are model[0] the body, model[0][-2] an inner stage and model[1] exactly GAP -> Flatten -> Linear?"""
    body, head = learn.model[0], learn.model[1]
    assert len(learn.model) == 2 and len(body) == 5
    assert isinstance(body[-2], nn.Sequential) and isinstance(body[-2][0][0], nn.Conv2d)
    assert [type(m) for m in head] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert head[0].output_size in (1, (1, 1))
    lin = learn.model[1][-1]
    assert type(lin) is nn.Linear and lin.in_features == CHANNELS[-1] and lin.out_features == 2
    assert lin.bias is not None
    assert list(learn.dls.vocab) == [False, True]


def test_final_feature_map_is_at_least_7x7(learn):
    """Does the body leave a feature map of at least 7x7 locations (and an inner stage a larger one)?"""
    x, _ = learn.dls.valid.one_batch()
    with torch.no_grad(), _evaluating(learn.model):
        act = learn.model[0](_plain(x[:1]))
        inner = learn.model[0][:-1](_plain(x[:1]))
    assert act.shape[1] == CHANNELS[-1] and min(act.shape[-2:]) >= 7
    assert min(inner.shape[-2:]) >= min(act.shape[-2:])


def test_head_is_an_exact_cam(learn):
    """Is the logit the mean over locations of the einsum CAM plus the bias (a true CAM)?"""
    x, _ = learn.dls.valid.one_batch()
    model = learn.model
    with torch.no_grad(), _evaluating(model):
        act = model[0](_plain(x[:2]))
        logits = model(_plain(x[:2]))
    w, b = model[1][-1].weight, model[1][-1].bias
    cams = torch.einsum("ck,nkij->ncij", w, act)
    assert torch.allclose(cams.mean((2, 3)) + b, logits, atol=1e-4)


# ---------------------------------------------------------------- what it learned
def test_validation_accuracy(learn):
    """Does the model classify at least 97 % of the validation images correctly?"""
    preds, targs = learn.get_preds(ds_idx=1)
    assert len(targs) == round(data.DEFAULT_N * 0.2)
    assert (preds.argmax(1) == targs).float().mean().item() >= 0.97


def test_gradcam_points_at_the_head(learn):
    """Does the Grad-CAM maximum (body output, true class) fall on the head in >= 90 % of images,
    far more often than a map that always points at the centre?"""
    from course_utils.cam import gradcam, pointing_game, upsample
    boxes = data.load_boxes(learn.dls.path)
    size = data.DEFAULT_SIZE
    maps = []
    for x, y in learn.dls.valid:
        maps.append(upsample(gradcam(learn.model, x, learn.model[0], y), size))  # fastai types as they come
    maps = torch.cat(maps)
    truth = [boxes[p.name] for p in learn.dls.valid.items]
    assert maps.shape == (len(truth), size, size)
    tolerance = 15 * size / 224
    score = pointing_game(maps, truth, tolerance)
    centre = torch.zeros_like(maps)
    centre[:, size // 2, size // 2] = 1                  # a map that always points at the middle
    baseline = pointing_game(centre, truth, tolerance)
    assert score >= 0.90 and score >= baseline + 0.15, (score, baseline)


# ---------------------------------------------------------------- the cache
def test_second_call_loads_the_cache(learn):
    """Does a second get_learner load the cached weights, without training or rewriting the file?"""
    file = model_cache_file(train_config())
    assert file.exists()
    stamp = file.stat().st_mtime_ns
    again = get_learner(online=False)
    assert file.stat().st_mtime_ns == stamp
    assert not getattr(again.recorder, "values", [])   # fit() never ran
    assert not again.model.training                     # returned ready for inference
    saved = torch.load(file, map_location="cpu")
    state = again.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    assert all(torch.equal(v.cpu(), state[k].cpu()) for k, v in learn.model.state_dict().items())


def test_cache_key_covers_the_config():
    """Do different training settings get different cache files?"""
    base = model_cache_file(train_config())
    assert base == model_cache_file(train_config())
    assert model_cache_file(train_config(epochs=3)) != base
    assert model_cache_file(train_config(lr=1e-3)) != base
    assert model_cache_file(train_config(n=600)) != base


def test_training_reports_each_epoch_and_the_report_changes_nothing(tmp_path, monkeypatch):
    """Does `log` hear the data generation and every epoch, and are the weights those of a silent run?"""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    heard: list[str] = []
    small = dict(online=False, n=64, size=112, epochs=2, use_cache=False)
    loud = get_learner(**small, log=heard.append)
    silent = get_learner(**small)
    assert "generating SynthPets" in heard[0] and "training the default model" in heard[1]
    assert [line.split(",")[0].strip() for line in heard[2:]] == ["epoch 1/2", "epoch 2/2"]
    a, b = loud.model.state_dict(), silent.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
