"""The course's default model: a small plain CNN trained from scratch on SynthPets, cached on disk.

Offline there are no pretrained weights and no PETS, so the chapter runs on `compact_cnn`: a
stride-2 stem and four conv stages (total stride 16) then global average pooling and ONE Linear
layer. With that head the book's `einsum` of `learn.model[1][-1].weight` with the body's
activations is an exact CAM (fastai's default head is not: see COURSE.md). The model is laid out
like a torchvision classifier, so fastai's `create_body` cuts it at the pool and `learn.model[0]`
is the body, `learn.model[0][-2]` an inner stage and `learn.model[1][-1]` the final Linear.

`get_learner()` trains deterministically once and caches the weights under
`cache_dir()/models/`, keyed by a hash of everything that shapes them; later calls load them in
seconds. `get_learner(online=True)` is the book's pretrained resnet34 on real PETS instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import (DEFAULT_N, DEFAULT_SEED, DEFAULT_SIZE, GENERATOR_VERSION, cache_dir,
                   default_folder_name, is_cat, synth_pets, use_online)

__all__ = ["CHANNELS", "STRIDES", "EPOCHS", "LR", "BS", "TRAIN_SEED", "compact_cnn", "cam_head",
           "get_dls", "get_learner", "train_config", "model_cache_file"]

CHANNELS = (16, 32, 64, 96, 128)   # stem, then the four stages; the last one feeds the Linear
STRIDES = (2, 2, 2, 2, 1)          # stem, then the four stages: total stride 16
EPOCHS = 10
LR = 8e-3
BS = 32
TRAIN_SEED = 42
NUM_WORKERS = 0                    # fastest measured on 2 CPU cores: worker processes only add IPC
SPLIT_SEED, VALID_PCT = 21, 0.2    # the book's split


# ----------------------------------------------------------------------------- architecture
def _conv_bn_relu(ni: int, nf: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the one building block of `compact_cnn`."""
    return nn.Sequential(nn.Conv2d(ni, nf, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(nf), nn.ReLU())


def cam_head(nf: int = CHANNELS[-1], n_out: int = 2) -> nn.Sequential:
    """Global average pool, flatten, one Linear with bias: the head for which CAM is exact."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nf, n_out))


def compact_cnn(pretrained: bool = False, n_out: int = 1000, channels: tuple = CHANNELS,
                strides: tuple = STRIDES) -> nn.Sequential:
    """A small plain CNN (stem + four conv stages + pool + Linear), quick to train from scratch on a CPU."""
    if pretrained:
        raise ValueError("compact_cnn has no pretrained weights: pass pretrained=False "
                         "(or use the online resnet34 with get_learner(online=True)).")
    if len(channels) != 5 or len(strides) != 5:
        raise ValueError(f"channels={channels}, strides={strides}: pass 5 values each (stem + 4 stages).")
    stem = _conv_bn_relu(3, channels[0], strides[0])
    stages = [nn.Sequential(_conv_bn_relu(ni, nf, s), _conv_bn_relu(nf, nf))
              for ni, nf, s in zip(channels[:-1], channels[1:], strides[1:])]
    return nn.Sequential(stem, *stages, *cam_head(channels[-1], n_out))


# ----------------------------------------------------------------------------- data & learner
def get_dls(path: str | os.PathLike | None = None, size: int = DEFAULT_SIZE, bs: int = BS,
            online: bool | None = None):
    """The book's `ImageDataLoaders.from_name_func` on SynthPets (offline) or PETS at 224 px (online)."""
    from fastai.vision.all import ImageDataLoaders, Resize, get_image_files
    from .data import pets_path
    online = use_online(online)
    if path is None:
        path = pets_path(online)
    if online:
        size = 224
    # Sorted so the seed-21 split is the same on every file system (os.walk order is not).
    files = get_image_files(path).sorted()
    workers = {} if online else {"num_workers": NUM_WORKERS}
    return ImageDataLoaders.from_name_func(path, files, valid_pct=VALID_PCT, seed=SPLIT_SEED,
                                           label_func=is_cat, item_tfms=Resize(size), bs=bs, **workers)


def train_config(n: int = DEFAULT_N, size: int = DEFAULT_SIZE, epochs: int = EPOCHS, lr: float = LR,
                 bs: int = BS, seed: int = TRAIN_SEED) -> dict:
    """Everything that shapes the trained weights; its hash names the cache file."""
    return {"data": {"name": "SynthPets", "version": GENERATOR_VERSION, "n": n, "size": size,
                     "seed": DEFAULT_SEED, "valid_pct": VALID_PCT, "split_seed": SPLIT_SEED},
            "arch": {"name": "compact_cnn", "channels": list(CHANNELS), "strides": list(STRIDES),
                     "head": "avgpool-flatten-linear"},
            "fit": {"method": "fit_one_cycle", "epochs": epochs, "lr": lr, "bs": bs, "seed": seed},
            "torch": ".".join(torch.__version__.split(".")[:2])}


def model_cache_file(config: dict) -> Path:
    """Where the weights trained with `config` are cached."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"compact_cnn-{key}.pth"


def _save_atomic(obj, file: Path) -> None:
    """`torch.save` to a temporary file next to `file`, then rename: never a half-written cache."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)   # mkstemp makes it private; the cache is an ordinary file
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _offline_learner(dls, size: int):
    """A fresh fastai `Learner`: compact_cnn body + `cam_head`, no normalisation (no pretrained stats)."""
    from fastai.vision.all import accuracy, error_rate, vision_learner
    if size < 112:
        raise ValueError(f"size={size}: pass size >= 112 so the final feature map is at least 7x7.")
    return vision_learner(dls, compact_cnn, pretrained=False, custom_head=cam_head(CHANNELS[-1], dls.c),
                          metrics=[error_rate, accuracy])


def _ready(learn):
    """The learner with its model in eval mode: a stray forward pass then leaves BN statistics alone."""
    learn.model.eval()
    return learn


def _epoch_logger(log: Callable[[str], None], epochs: int):
    """A fastai callback that reports each finished epoch through `log` (it reads, never changes, training)."""
    from fastai.callback.core import Callback
    from fastai.learner import Recorder

    class EpochLog(Callback):
        order = Recorder.order + 1          # after the Recorder has the epoch's metrics

        def before_fit(self):
            self.start = time.perf_counter()

        def after_epoch(self):
            values = self.learn.recorder.values[-1] if self.learn.recorder.values else []
            accuracy = f", validation accuracy {values[-1]:.3f}" if values else ""
            log(f"  epoch {self.epoch + 1}/{epochs}{accuracy} ({time.perf_counter() - self.start:.0f} s)")
    return EpochLog()


def get_learner(online: bool | None = None, *, n: int = DEFAULT_N, size: int = DEFAULT_SIZE,
                epochs: int = EPOCHS, lr: float = LR, bs: int = BS, seed: int = TRAIN_SEED,
                use_cache: bool = True, log: Callable[[str], None] | None = None):
    """A trained Learner: compact_cnn on SynthPets (trained once, then cached) or, online, the book's resnet34.

    `log` (e.g. print) hears what takes time: generating the data and each training epoch.
    """
    if use_online(online):
        from fastai.vision.all import error_rate, resnet34, vision_learner
        learn = vision_learner(get_dls(online=True), resnet34, metrics=error_rate)
        learn.fine_tune(1)
        return learn
    from fastai.vision.all import set_seed
    config = train_config(n, size, epochs, lr, bs, seed)
    file = model_cache_file(config)
    folder = cache_dir() / default_folder_name(n, size, DEFAULT_SEED)
    if log and not folder.is_dir():
        log(f"generating SynthPets ({n} images, {size} px) in {folder} (a few seconds, once)")
    path = synth_pets(folder, n, size, DEFAULT_SEED)
    if use_cache and file.exists():
        learn = _offline_learner(get_dls(path, size, bs, online=False), size)
        learn.model.load_state_dict(torch.load(file, map_location="cpu"))
        return _ready(learn)
    set_seed(seed, reproducible=True)   # seeds the split shuffles, the weight init and the batches
    learn = _offline_learner(get_dls(path, size, bs, online=False), size)
    start = time.perf_counter()
    if log:
        log(f"training the default model once ({epochs} epochs, about 40 s on 2 cores; cached in {file.parent})")
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr, cbs=[_epoch_logger(log, epochs)] if log else None)
        seconds = time.perf_counter() - start
        epochs_log = [[float(v) for v in row] for row in learn.recorder.values]
        valid = learn.validate()
    _save_atomic({k: v.detach().cpu() for k, v in learn.model.state_dict().items()}, file)
    info = {"config": config, "train_seconds": round(seconds, 1),
            "valid": dict(zip(["loss", "error_rate", "accuracy"], map(float, valid))),
            "epochs": epochs_log}   # per epoch: train loss, valid loss, error rate, accuracy
    file.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return _ready(learn)
