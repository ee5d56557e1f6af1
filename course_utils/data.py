"""Data for the course: an offline stand-in for Oxford-IIIT PETS ("SynthPets") and the online switch.

SynthPets is a folder of generated PNGs named like PETS (cat breeds capitalised, dog breeds
lower case), so the book's `is_cat` labels it unchanged. Cats and dogs differ only by their ears
(pointed upright triangles vs. rounded floppy ears hanging down); body, coat and ear colours,
size, position and background come from the same distribution for both classes, and distractor
triangles and blobs that look like ears on their own are scattered around. A classifier therefore
has to look at the head, and `boxes.csv` records where each head is, so localisation can be scored.
A head's box covers the head and the places of BOTH kinds of ears: it depends on the pose only, so
it says nothing about the class, and "no pointed ears here" (evidence for a dog) lies inside it.
Ears are always a dark shade of the coat: with low-contrast ears a small CNN trained from scratch
stayed at chance for 10+ epochs (measured), with dark ears it learns within 2-3 epochs.

Nothing is generated, downloaded or imported from fastai when this module is imported.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEFAULT_N", "DEFAULT_SIZE", "DEFAULT_SEED", "GENERATOR_VERSION", "BOXES_FILE",
           "MANIFEST_FILE", "cache_dir", "default_folder_name", "use_online", "is_cat", "synth_pets", "load_boxes",
           "pets_path", "test_image", "test_image_box"]

DEFAULT_N = 1200     # images in the default SynthPets folder (about 50 % cats)
DEFAULT_SIZE = 128   # pixels; a total stride of 16 leaves an 8x8 final feature map
DEFAULT_SEED = 0
GENERATOR_VERSION = 3  # bump whenever the drawing changes: it is part of every cache key
HEAD_RADIUS = (0.105, 0.125)  # of the image size: small enough that pointing at the centre is no good
                              # strategy, large enough for the ears to be learnt in 10 epochs (measured)
BOXES_FILE = "boxes.csv"
MANIFEST_FILE = "synthpets.json"

# Real Oxford-IIIT PETS breed names: cats are capitalised, dogs are not (the book's labelling rule).
CAT_BREEDS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
              "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx")
DOG_BREEDS = ("american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
              "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
              "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
              "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
              "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
              "yorkshire_terrier")

# Random streams: dataset image i of seed s uses (s, _DATASET_STREAM, i); the held-out test
# image uses (DEFAULT_SEED, _TEST_STREAM, 0). The middle entries differ, so no dataset of any
# seed can ever contain the test image.
_DATASET_STREAM, _TEST_STREAM = 0, 1
# Coat colours (RGB) shared by cats and dogs; backgrounds and clutter use any colour.
FUR = ((230, 225, 215), (200, 160, 110), (150, 100, 60), (90, 60, 40), (40, 35, 35),
       (120, 120, 125), (220, 140, 60), (180, 170, 150))
_TRUE = {"1", "true", "yes", "on"}


# ----------------------------------------------------------------------------- switches & paths
def cache_dir() -> Path:
    """Folder for generated data and trained models: `$COURSE_CACHE` or ~/.cache/cnn-cam-course."""
    env = os.environ.get("COURSE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "cnn-cam-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_online(online: bool | None = None) -> bool:
    """Whether to use the book's real PETS + pretrained resnet34: the argument, else `$COURSE_ONLINE`."""
    if online is not None:
        return bool(online)
    return os.environ.get("COURSE_ONLINE", "").strip().lower() in _TRUE


def is_cat(name: str | os.PathLike) -> bool:
    """The book's labelling rule: PETS cat breeds start with a capital letter."""
    name = Path(name).name
    return name[0].isupper()


# ----------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class _Scene:
    """Every random choice for one picture, so it can be redrawn with or without the head."""
    size: int
    cat: bool
    bg: tuple            # (colour a, colour b, gradient angle)
    noise_seed: int
    noise_sd: float
    distractors: tuple   # ((kind, colour, points), ...)
    body: tuple          # (centre x, centre y, half width, half height, angle)
    head: tuple          # (centre x, centre y, radius)
    ears: tuple          # (polygon, polygon)
    other_ears: tuple    # the ears the other class would have here: inside the box, never drawn
    fur: tuple           # RGB of the animal
    ear_fur: tuple       # RGB of the ears
    eye: tuple           # RGB of the eyes and nose


def _colour(rng: np.random.Generator) -> tuple:
    """A random RGB colour, for backgrounds, clutter and eyes (coats use `FUR`)."""
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _shade(colour: tuple, factor: float) -> tuple:
    """`colour` darkened (factor < 1) or lightened (factor > 1), clipped to 0..255."""
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, k: int = 24) -> list:
    """Polygon of an ellipse with half axes a, b rotated by `angle` radians."""
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for t in np.linspace(0, 2 * math.pi, k, endpoint=False):
        x, y = a * math.cos(t), b * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def _triangle(cx: float, cy: float, base: float, height: float, angle: float) -> list:
    """Isosceles triangle with its base centred on (cx, cy), apex `height` away along `angle`."""
    dx, dy = math.sin(angle), -math.cos(angle)   # angle 0 points straight up
    px, py = -dy, dx
    return [(cx - px * base / 2, cy - py * base / 2), (cx + px * base / 2, cy + py * base / 2),
            (cx + dx * height, cy + dy * height)]


def _ear_params(rng: np.random.Generator) -> tuple:
    """Where the ears sit (radians from the top), their length, width and tilt, as fractions of r."""
    return rng.uniform(0.45, 0.75), rng.uniform(1.2, 1.5), rng.uniform(0.75, 0.95), rng.uniform(0.1, 0.35)


def _ears(cat: bool, hx: float, hy: float, r: float, params: tuple) -> tuple:
    """Two ear polygons: pointed and upright for a cat, rounded and hanging down for a dog."""
    spread, length, width, tilt = params
    length, width = length * r, width * r
    ears = []
    for side in (-1, 1):
        if cat:
            bx, by = hx + side * r * 0.8 * math.sin(spread), hy - r * 0.8 * math.cos(spread)
            ears.append(_triangle(bx, by, width, length * 1.1, side * (spread * 0.6 + tilt * 0.5)))
        else:
            cx, cy = hx + side * r * 1.05, hy + r * 0.55
            ears.append(_ellipse(cx, cy, width * 0.5, length * 0.8, -side * tilt))
    return tuple(tuple(e) for e in ears)


def _distractor(rng: np.random.Generator, size: int, r: float) -> tuple:
    """One clutter shape: an ear-like triangle, a blob or a bar, with a random colour."""
    kind = ("triangle", "triangle", "blob", "blob", "bar")[int(rng.integers(0, 5))]
    cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    scale = r * rng.uniform(0.6, 1.6)
    if kind == "triangle":
        pts = _triangle(cx, cy, scale * 0.7, scale * 1.0, rng.uniform(-math.pi, math.pi))
    elif kind == "blob":
        pts = _ellipse(cx, cy, scale * rng.uniform(0.3, 0.8), scale * rng.uniform(0.3, 0.8),
                       rng.uniform(0, math.pi))
    else:
        pts = _ellipse(cx, cy, scale * 1.4, scale * 0.2, rng.uniform(0, math.pi), k=4)
    return kind, _colour(rng), tuple(pts)


def _bbox(points) -> tuple:
    """Bounding box (x0, y0, x1, y1) of a list of (x, y) points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _overlaps(a: tuple, b: tuple) -> bool:
    """Whether two boxes (x0, y0, x1, y1) intersect."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _scene(rng: np.random.Generator, size: int, cat: bool) -> _Scene:
    """Draw every random choice of one picture; only the ears depend on `cat`."""
    bg = (_colour(rng), _colour(rng), rng.uniform(0, 2 * math.pi))
    noise_seed, noise_sd = int(rng.integers(0, 2**31)), rng.uniform(2, 6)
    r = size * rng.uniform(*HEAD_RADIUS)
    # The head can sit almost anywhere; cat ears always stay inside the picture (the tips of
    # hanging dog ears can leave it at the bottom edge).
    hx = rng.uniform(1.6 * r + 2, size - 1.6 * r - 2)
    hy = rng.uniform(2.1 * r + 2, size - 1.3 * r - 2)
    side = 1 if rng.random() < 0.5 else -1
    body = (hx + side * r * rng.uniform(0.8, 1.8), hy + r * rng.uniform(1.6, 2.4),
            r * rng.uniform(1.4, 2.2), r * rng.uniform(0.9, 1.3), side * rng.uniform(0.0, 0.6))
    fur = _shade(FUR[int(rng.integers(0, len(FUR)))], rng.uniform(0.8, 1.2))
    ear_fur = _shade(fur, rng.uniform(0.2, 0.4))
    eye = _shade(_colour(rng), 0.3)
    ear_params = _ear_params(rng)
    ears = _ears(cat, hx, hy, r, ear_params)
    # Clutter keeps clear of where either kind of ear would be, so it cannot betray the class.
    either = [p for kind in (True, False) for e in _ears(kind, hx, hy, r, ear_params) for p in e]
    keep_clear = _bbox(either + [(hx - r, hy - r), (hx + r, hy + r)])
    keep_clear = (keep_clear[0] - 4, keep_clear[1] - 4, keep_clear[2] + 4, keep_clear[3] + 4)
    distractors = []
    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(20):   # clutter must not touch the head, or it would change the class
            d = _distractor(rng, size, r)
            if not _overlaps(_bbox(d[2]), keep_clear):
                distractors.append(d)
                break
    return _Scene(size, cat, bg, noise_seed, noise_sd, tuple(distractors), body, (hx, hy, r),
                  ears, _ears(not cat, hx, hy, r, ear_params), fur, ear_fur, eye)


def _background(scene: _Scene) -> Image.Image:
    """A linear colour gradient in a random direction plus smooth blotches (low-frequency noise)."""
    s = scene.size
    (ca, cb, angle) = scene.bg
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
    t = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
    t = ((t - t.min()) / (t.max() - t.min() + 1e-6))[..., None]
    arr = (1 - t) * np.array(ca, np.float32) + t * np.array(cb, np.float32)
    coarse = np.random.default_rng(scene.noise_seed + 1).normal(0, 25, (6, 6, 3)).astype(np.float32)
    blotches = np.stack([np.asarray(Image.fromarray(coarse[..., c], "F").resize((s, s), Image.BICUBIC))
                         for c in range(3)], -1)
    return Image.fromarray(np.clip(arr + blotches, 0, 255).round().astype(np.uint8), "RGB")


def _draw_head(draw: ImageDraw.ImageDraw, scene: _Scene, mask: bool = False) -> None:
    """Ears, head, eyes and nose; with `mask` everything is drawn in white (for the box)."""
    hx, hy, r = scene.head
    pick = (lambda c: 255) if mask else (lambda c: c)
    for ear in scene.ears + (scene.other_ears if mask else ()):
        draw.polygon(list(ear), fill=pick(scene.ear_fur))
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=pick(scene.fur))
    e = max(1.0, r * 0.16)
    for side in (-1, 1):
        ex, ey = hx + side * r * 0.4, hy - r * 0.15
        draw.ellipse([ex - e, ey - e, ex + e, ey + e], fill=pick(scene.eye))
    draw.ellipse([hx - e, hy + r * 0.3 - e * 0.8, hx + e, hy + r * 0.3 + e * 0.8], fill=pick(scene.eye))


def _render(scene: _Scene, head: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pixels (HxWx3 uint8) of a scene and the head's box (x0, y0, x1, y1), both ends inclusive."""
    img = _background(scene)
    draw = ImageDraw.Draw(img)
    for _kind, colour, pts in scene.distractors:
        draw.polygon(list(pts), fill=colour)
    draw.polygon(_ellipse(*scene.body), fill=scene.fur)
    if head:
        _draw_head(draw, scene)
    mask = Image.new("L", (scene.size, scene.size), 0)
    _draw_head(ImageDraw.Draw(mask), scene, mask=True)
    x0, y0, x1, y1 = mask.getbbox()
    noise = np.random.default_rng(scene.noise_seed).normal(0, scene.noise_sd, (scene.size, scene.size, 3))
    arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).round().astype(np.uint8)
    return arr, (x0, y0, x1 - 1, y1 - 1)


def _picture_scene(seed: int, stream: int, i: int, size: int, cat: bool) -> tuple[_Scene, str]:
    """Scene and PETS-style breed name of picture `i` of a random stream."""
    rng = np.random.default_rng((seed, stream, i))
    breeds = CAT_BREEDS if cat else DOG_BREEDS
    breed = breeds[int(rng.integers(0, len(breeds)))]
    return _scene(rng, size, cat), breed


def _picture(seed: int, stream: int, i: int, size: int, cat: bool) -> tuple[np.ndarray, tuple, str]:
    """Pixels, head box and PETS-style breed name of picture `i` of a random stream."""
    scene, breed = _picture_scene(seed, stream, i, size, cat)
    arr, box = _render(scene)
    return arr, box, breed


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Write an RGB array as a PNG with no metadata, so identical pixels give identical bytes."""
    Image.fromarray(arr, "RGB").save(path, format="PNG", optimize=False, compress_level=6)


# ----------------------------------------------------------------------------- dataset on disk
def _check_params(n: int, size: int, seed: int) -> None:
    """Reject parameters that cannot make a usable dataset, naming the fix."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: pass an integer n >= 2 (at least one cat and one dog).")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size={size!r}: pass an integer size >= 32 pixels (112+ for a 7x7 feature map).")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: pass a non-negative integer seed.")


def _manifest(n: int, size: int, seed: int) -> dict:
    """What a finished SynthPets folder records about itself."""
    return {"dataset": "SynthPets", "version": GENERATOR_VERSION, "n": n, "size": size, "seed": seed}


def _is_complete(path: Path, manifest: dict) -> bool:
    """Whether `path` already holds the finished dataset described by `manifest`."""
    try:
        found = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found == manifest and len(list(path.glob("*.png"))) == manifest["n"]


def _write_dataset(folder: Path, n: int, size: int, seed: int) -> None:
    """Write all pictures, `boxes.csv`, then the manifest (last: it marks the folder complete)."""
    rows = []
    for i in range(n):
        cat = i % 2 == 0   # exactly balanced classes; everything else is random
        arr, box, breed = _picture(seed, _DATASET_STREAM, i, size, cat)
        name = f"{breed}_{i}.png"
        _save_png(arr, folder / name)
        rows.append((name, *box))
    with open(folder / BOXES_FILE, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("name", "x0", "y0", "x1", "y1"))
        w.writerows(rows)
    (folder / MANIFEST_FILE).write_text(json.dumps(_manifest(n, size, seed), indent=1) + "\n")


def synth_pets(path: str | os.PathLike, n: int = DEFAULT_N, size: int = DEFAULT_SIZE,
               seed: int = DEFAULT_SEED) -> Path:
    """Generate (or reuse) a deterministic PETS-like folder of n PNGs with head boxes; offline data."""
    _check_params(n, size, seed)
    path = Path(path)
    manifest = _manifest(n, size, seed)
    if _is_complete(path, manifest):
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not a SynthPets folder with n={n}, size={size}, "
                         f"seed={seed}: pass an empty or new folder, or delete it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tmp.chmod(0o755)   # mkdtemp makes it private; the finished dataset is an ordinary folder
        _write_dataset(tmp, n, size, seed)
        try:
            os.replace(tmp, path)   # atomic; also replaces an empty folder
        except OSError:
            if not _is_complete(path, manifest):   # someone else finishing first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_boxes(path: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """Head boxes of a SynthPets folder: file name -> (x0, y0, x1, y1) in pixels, ends inclusive.

    A box covers the head and where either kind of ear would be, so it does not reveal the class.
    """
    file = Path(path) / BOXES_FILE
    if not file.exists():
        raise ValueError(f"{file} not found: pass a folder made by synth_pets() (PETS has no head boxes).")
    with open(file, newline="") as f:
        return {row["name"]: tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
                for row in csv.DictReader(f)}


def default_folder_name(n: int = DEFAULT_N, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> str:
    """Cache folder name of a SynthPets dataset; every parameter is in it, so configs never collide."""
    return f"synthpets-v{GENERATOR_VERSION}-n{n}-s{size}-seed{seed}"


def pets_path(online: bool | None = None) -> Path:
    """Folder of pet images: the book's PETS `images` online, else the cached default SynthPets."""
    if use_online(online):
        from fastai.data.external import URLs, untar_data   # lazy: fastai's import costs ~10 s
        return untar_data(URLs.PETS) / "images"
    return synth_pets(cache_dir() / default_folder_name())


# ----------------------------------------------------------------------------- held-out test image
def _test_picture(size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The held-out cat: drawn from a random stream that no dataset uses."""
    arr, box, _breed = _picture(DEFAULT_SEED, _TEST_STREAM, 0, size, cat=True)
    return arr, box


def test_image(size: int = DEFAULT_SIZE):
    """A held-out SynthPets cat as a fastai `PILImage`: the offline stand-in for the book's `image_cat()`."""
    _check_params(2, size, 0)
    from fastai.vision.core import PILImage   # lazy: fastai's import costs ~10 s
    return PILImage.create(_test_picture(size)[0])


def test_image_box(size: int = DEFAULT_SIZE) -> tuple[int, int, int, int]:
    """Head box (x0, y0, x1, y1, ends inclusive) of `test_image(size)`, for checking a heat map."""
    _check_params(2, size, 0)
    return _test_picture(size)[1]


test_image.__test__ = False        # not pytest tests, despite their names
test_image_box.__test__ = False
