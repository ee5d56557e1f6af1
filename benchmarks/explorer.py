"""Latency of the CAM explorer: from a control change to the new overlay image, on the default model.

    PYTHONPATH=. python benchmarks/explorer.py [--rounds 40] [--threads N]   # a Markdown table for the README

Each sample sets a control of the widget built by `explore(learn)` (as a click does), which runs
its observer synchronously: the explorer's update, the new PNG and the caption written into the
widgets. What the browser does after that (the comm message, decoding the PNG) is not included.
Cached changes (layer, class, opacity) are timed on images whose maps are already computed; a new
image is one never shown before (its input, probabilities, one Grad-CAM call for all layers, PNG).
Reported: median and worst over the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

TARGET_MS = {"layer": 100, "class (cached)": 100, "opacity": 100, "new image": 300}


def controls(box) -> dict:
    """The explorer widget's controls by name (see course_utils.explorer.explore)."""
    image = box.children[0].children[0]
    layer, target = box.children[2].children
    return {"image": image, "method": box.children[1], "layer": layer, "class": target,
            "opacity": box.children[3]}


def timed(widget, value) -> float:
    """Milliseconds from setting the widget's value to the new image being in the image widget."""
    start = time.perf_counter()
    widget.value = value
    return 1000 * (time.perf_counter() - start)


def measure(rounds: int) -> dict[str, list[float]]:
    """Samples in ms per kind of change; the first `rounds` validation images are the new ones."""
    from course_utils.explorer import explore
    from course_utils.model import get_learner
    box = explore(get_learner(online=False))
    c, ex = controls(box), box.explorer
    if len(ex.items) < rounds + 2:
        raise SystemExit(f"--rounds {rounds}: the validation set has only {len(ex.items)} images")
    layers = list(ex.layers)
    samples: dict[str, list[float]] = {k: [] for k in TARGET_MS}
    for r in range(rounds):
        samples["new image"].append(timed(c["image"], r + 1))        # never shown before
        c["class"].value = 1 - ex.prediction                         # warm the other class once
        c["class"].value = -1
        samples["layer"].append(timed(c["layer"], layers[r % (len(layers) - 1)]))
        c["layer"].value = layers[-1]
        samples["class (cached)"].append(timed(c["class"], 1 - ex.prediction))
        c["class"].value = -1
        samples["opacity"].append(timed(c["opacity"], 0.3 + 0.4 * (r % 2)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="samples per kind of change (default 40)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads outside the explorer's passes (default: torch's); "
                             "the explorer runs one image's passes on one thread")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    samples = measure(args.rounds)
    print(f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {sys.version.split()[0]}, {args.rounds} rounds\n")
    print("| change | median ms | worst ms | target ms | met |\n|---|---|---|---|---|")
    for kind, ms in samples.items():
        med, worst = statistics.median(ms), max(ms)
        print(f"| {kind} | {med:.1f} | {worst:.1f} | ≤ {TARGET_MS[kind]} | "
              f"{'yes' if worst <= TARGET_MS[kind] else 'median only' if med <= TARGET_MS[kind] else 'no'} |")


if __name__ == "__main__":
    main()
