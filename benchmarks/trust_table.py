"""The ground-truth table of lesson 11 on the whole SynthPets validation set: every CAM method at
two layers of the default model, scored by the pointing game and the energy in the head box,
deletion and insertion AUC, and the time per image of the call (course_utils.evaluate).

    PYTHONPATH=. python benchmarks/trust_table.py [--n 240] [--steps 16]
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")  # fastai's import chatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=0, help="validation images (default: all)")
    parser.add_argument("--steps", type=int, default=16, help="steps of the deletion/insertion curves")
    args = parser.parse_args()
    if args.n < 0 or args.steps < 1:
        parser.error("--n must be >= 0 (0 = all) and --steps >= 1")
    from course_utils import load_boxes, pets_path
    from course_utils.evaluate import markdown_table, score_methods
    from course_utils.model import get_learner

    learn = get_learner(online=False)
    model, dls = learn.model.eval(), learn.dls
    xs, ys = zip(*dls.valid)
    x = torch.cat(xs).as_subclass(torch.Tensor)
    y = torch.cat(ys).as_subclass(torch.Tensor)
    n = args.n or len(x)
    boxes = load_boxes(pets_path(False))
    vboxes = [boxes[f.name] for f in dls.valid.items[:n]]   # dls.valid is not shuffled
    start = time.perf_counter()
    rows = score_methods(model, x[:n], y[:n], vboxes, {"body": model[0], "stage 3": model[0][-2]},
                         steps=args.steps)
    print(f"SynthPets validation set, {n} images of {x.shape[-1]} px, default model; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          f"{args.steps} deletion/insertion steps; {time.perf_counter() - start:.0f} s in all")
    print()
    print(markdown_table(rows), end="")


if __name__ == "__main__":
    main()
