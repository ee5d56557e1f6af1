"""SynthPets, the offline stand-in for PETS, and the online switch."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from course_utils import data
from course_utils.data import (BOXES_FILE, CAT_BREEDS, DOG_BREEDS, MANIFEST_FILE, cache_dir,
                               is_cat, load_boxes, pets_path, synth_pets, use_online)
from grader.layout import ROOT

SMALL = dict(n=8, size=48)


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny SynthPets folder."""
    return synth_pets(tmp_path_factory.mktemp("sp") / "a", seed=3, **SMALL)


# ---------------------------------------------------------------- switches
def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    """Does $COURSE_CACHE choose the cache folder, and is it created?"""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("COURSE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "cnn-cam-course"


@pytest.mark.parametrize("env,expected", [(None, False), ("", False), ("0", False), ("no", False),
                                          ("1", True), ("true", True), ("YES", True)])
def test_use_online_reads_the_environment(monkeypatch, env, expected):
    """Is offline the default, and does $COURSE_ONLINE switch it on?"""
    if env is None:
        monkeypatch.delenv("COURSE_ONLINE", raising=False)
    else:
        monkeypatch.setenv("COURSE_ONLINE", env)
    assert use_online() is expected
    assert use_online(False) is False and use_online(True) is True   # the argument wins


def test_is_cat_is_the_books_rule():
    """Does is_cat follow the capital-letter rule for names and paths?"""
    assert is_cat("Abyssinian_1.png") and not is_cat("beagle_7.png")
    assert is_cat(Path("/x/y/Bengal_3.png")) and not is_cat(Path("/Cats/pug_1.png"))


# ---------------------------------------------------------------- the generated folder
def test_same_seed_gives_identical_bytes(small, tmp_path):
    """Are two folders generated with the same parameters byte-identical?"""
    again = synth_pets(tmp_path / "b", seed=3, **SMALL)
    assert _digests(again) == _digests(small)


def test_other_seed_gives_other_pictures(small, tmp_path):
    """Does another seed draw other pictures?"""
    other = _digests(synth_pets(tmp_path / "b", seed=4, **SMALL))
    mine = _digests(small)
    assert set(other.values()).isdisjoint(mine.values())


def test_names_follow_the_pets_rule(small):
    """Are cats named after capitalised PETS cat breeds, dogs after lower-case ones, both present?"""
    pngs = sorted(small.glob("*.png"))
    assert len(pngs) == SMALL["n"]
    cats = [p for p in pngs if is_cat(p)]
    assert 0 < len(cats) < len(pngs)
    for p in pngs:
        breed = p.stem.rsplit("_", 1)[0]
        assert breed in (CAT_BREEDS if is_cat(p) else DOG_BREEDS)
    with Image.open(pngs[0]) as im:
        assert im.size == (SMALL["size"], SMALL["size"]) and im.mode == "RGB"


def test_boxes_file_matches_the_pictures(small):
    """Does load_boxes give one in-image box per picture?"""
    boxes = load_boxes(small)
    assert sorted(boxes) == sorted(p.name for p in small.glob("*.png"))
    for x0, y0, x1, y1 in boxes.values():
        assert 0 <= x0 <= x1 < SMALL["size"] and 0 <= y0 <= y1 < SMALL["size"]


@pytest.mark.parametrize("i", range(12))
def test_box_holds_the_head_for_either_class_and_nothing_more(i):
    """Is the box the same for a cat and a dog in the same pose, and is it tight around both heads?"""
    changed, boxes = [], set()
    for cat in (True, False):
        scene = data._scene(np.random.default_rng((0, 0, i)), 128, cat)
        with_head, box = data._render(scene)
        without, _ = data._render(scene, head=False)
        ys, xs = np.nonzero((with_head != without).any(-1))
        x0, y0, x1, y1 = box
        assert len(xs) and xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        changed.append((xs, ys))
        boxes.add(box)
    assert len(boxes) == 1, "the box must not depend on the class"
    xs, ys = np.concatenate([c[0] for c in changed]), np.concatenate([c[1] for c in changed])
    # tight: cat or dog reaches every side (a pixel may keep its colour by chance, hence 1 px slack)
    assert xs.min() <= x0 + 1 and xs.max() >= x1 - 1 and ys.min() <= y0 + 1 and ys.max() >= y1 - 1


def test_saved_boxes_are_the_drawn_boxes(small):
    """Is the box on disk the box of the head that was drawn?"""
    boxes = load_boxes(small)
    for i in range(SMALL["n"]):
        scene, breed = data._picture_scene(3, 0, i, SMALL["size"], cat=i % 2 == 0)
        assert boxes[f"{breed}_{i}.png"] == data._render(scene)[1]


def test_classes_differ_only_by_the_ears():
    """Redrawn as the other class, does a picture change only inside the head box?"""
    for i in range(6):
        rng_a, rng_b = np.random.default_rng((0, 0, i)), np.random.default_rng((0, 0, i))
        cat, dog = data._scene(rng_a, 96, True), data._scene(rng_b, 96, False)
        a, box = data._render(cat)
        b, _ = data._render(dog)
        ys, xs = np.nonzero((a != b).any(-1))
        assert len(xs) and xs.min() >= box[0] and xs.max() <= box[2] and ys.min() >= box[1] and ys.max() <= box[3]


def test_existing_dataset_is_reused(small):
    """Does a second call return the finished folder without rewriting it?"""
    before = {p.name: p.stat().st_mtime_ns for p in small.iterdir()}
    assert synth_pets(small, seed=3, **SMALL) == small
    assert {p.name: p.stat().st_mtime_ns for p in small.iterdir()} == before


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    """If writing fails half-way, is there no half dataset and no temporary folder left?"""
    real = data._save_png
    calls = []

    def failing(arr, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(arr, path)

    monkeypatch.setattr(data, "_save_png", failing)
    with pytest.raises(KeyboardInterrupt):
        synth_pets(tmp_path / "sp", **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(data, "_save_png", real)
    assert (synth_pets(tmp_path / "sp", **SMALL) / MANIFEST_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sp"]


@pytest.mark.parametrize("kwargs,word", [(dict(n=1), "n >= 2"), (dict(n=2.5), "n >= 2"),
                                         (dict(n=True), "n >= 2"), (dict(size=31), "size >= 32"),
                                         (dict(seed=-1), "non-negative"), (dict(seed="0"), "seed")])
def test_bad_parameters_raise(tmp_path, kwargs, word):
    """Are impossible parameters refused with a ValueError that names the fix?"""
    with pytest.raises(ValueError, match=word):
        synth_pets(tmp_path / "sp", **kwargs)
    assert not (tmp_path / "sp").exists()


def test_foreign_folder_is_not_overwritten(tmp_path, small):
    """Is a non-empty folder that is not this dataset left alone, with a ValueError?"""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="empty or new folder"):
        synth_pets(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="delete it"):
        synth_pets(small, seed=5, **SMALL)   # a SynthPets folder with other parameters


def test_load_boxes_needs_a_synthpets_folder(tmp_path):
    """Does load_boxes on a folder without boxes explain what it needs?"""
    with pytest.raises(ValueError, match="synth_pets"):
        load_boxes(tmp_path)


# ---------------------------------------------------------------- pets_path and the test image
def test_pets_path_offline_is_found_by_fastai(monkeypatch):
    """Offline, is pets_path a cached SynthPets folder that get_image_files reads?"""
    from fastai.vision.all import get_image_files
    monkeypatch.delenv("COURSE_ONLINE", raising=False)
    path = pets_path()
    assert path.parent == cache_dir() and (path / BOXES_FILE).exists()
    files = get_image_files(path)
    assert len(files) == data.DEFAULT_N
    assert {is_cat(f) for f in files} == {True, False}


def test_pets_path_online_asks_for_the_books_pets(monkeypatch):
    """Online, does pets_path call untar_data(URLs.PETS) (stopped before any download)?"""
    import fastai.data.external as external
    asked = []

    def fake_untar(url, *args, **kwargs):
        asked.append(url)
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(external, "untar_data", fake_untar)
    monkeypatch.setenv("COURSE_ONLINE", "1")
    with pytest.raises(RuntimeError, match="no download"):
        pets_path()
    assert asked == [external.URLs.PETS]


def test_test_image_is_a_held_out_cat():
    """Is test_image a cat PILImage with its head box inside, and different from every dataset image?"""
    from fastai.vision.core import PILImage
    img = data.test_image()
    assert type(img) is PILImage and img.size == (data.DEFAULT_SIZE, data.DEFAULT_SIZE)
    x0, y0, x1, y1 = data.test_image_box()
    assert 0 <= x0 < x1 < data.DEFAULT_SIZE and 0 <= y0 < y1 < data.DEFAULT_SIZE
    arr = np.asarray(img)
    scene, _ = data._picture_scene(data.DEFAULT_SEED, data._TEST_STREAM, 0, data.DEFAULT_SIZE, True)
    assert scene.cat and np.array_equal(arr, data._render(scene)[0])
    digest = hashlib.sha256(arr.tobytes()).hexdigest()
    for p in pets_path(online=False).glob("*.png"):
        with Image.open(p) as im:
            assert hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest() != digest


def test_import_has_no_side_effects(tmp_path):
    """Does importing course_utils.data generate nothing and leave fastai unimported?"""
    import subprocess
    import sys
    env = dict(os.environ, COURSE_CACHE=str(tmp_path / "c"))
    code = "import sys, course_utils.data; print('fastai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False" and not (tmp_path / "c").exists()
