"""What the tripwire's audit hook costs: per audited event, and on whole lessons.

    PYTHONPATH=. python benchmarks/tripwire.py                      # per event, and every lesson without / with the hook
    PYTHONPATH=. python benchmarks/tripwire.py 11_trust --repeat 3  # some lessons, alternating runs

Each measurement runs in a child forked from one warm process (the worker's imports), so the hook,
which cannot be removed, never outlives it. A lesson's time is the sum of its cells' times in
execnb's CaptureShell, as the grader runs them (not sandboxed here: the sandbox costs the same either way).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import timeit
import warnings

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))             # classroom, release
WARM = ("fastai.vision.all", "fastai.text.all", "course_utils", "course_utils.cam", "course_utils.checks",
        "course_utils.model", "course_utils.data", "course_utils.viz", "course_utils.text", "execnb.shell",
        "matplotlib_inline.backend_inline", "torchvision")
# (what, statement, repetitions): events the hook ignores, examines, and examines to the end.
EVENTS = [("id(x): builtins.id, ignored", "id(x)", 1_000_000),
          ("sys._getframe(): ignored", "sys._getframe()", 1_000_000),
          ("x.__class__ = C: object.__setattr__, examined", "x.__class__ = C", 500_000),
          ("open+close a file: open, examined", "open(__file__).close()", 50_000),
          ("open+close /proc/self/status: open, to the end", "open('/proc/self/status').close()", 50_000)]


def in_child(work) -> dict:
    """work() in a forked child; its JSON answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)


def per_event(hooked: bool) -> dict:
    class C:
        pass
    x = C()
    if hooked:
        from grader import tripwire
        tripwire.install([os.pipe()[1]])
    scope = {"x": x, "C": C, "sys": sys, "__file__": __file__}
    return {what: min(timeit.repeat(stmt, number=n, repeat=5, globals=scope)) / n * 1e9 for what, stmt, n in EVENTS}


def lesson_seconds(lesson: str, hooked: bool) -> dict:
    import classroom
    import nbformat
    import torch
    torch.set_num_threads(1)
    from execnb.shell import CaptureShell
    cells = [c.source for c in nbformat.read(classroom.notebook_path(ROOT / "solutions", lesson), as_version=4).cells
             if c.cell_type == "code"]
    shell = CaptureShell(path=os.getcwd(), mpl_format="png")
    wire = None
    if hooked:
        from grader import tripwire
        wire = tripwire.install([os.pipe()[1]])
    total = 0.0
    for index, source in enumerate(cells):
        if wire:
            wire.cell = index
        start = time.perf_counter()
        shell.run(source, timeout=900, grace=0.1)
        total += time.perf_counter() - start
    return {"seconds": total, "flags": wire.flags() if wire else []}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lessons to time (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each lesson with and without the hook")
    args = parser.parse_args(argv)
    from release import lessons
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    import matplotlib
    matplotlib.use("Agg")
    for name in WARM:
        importlib.import_module(name)
    before, after = in_child(lambda: per_event(False)), in_child(lambda: per_event(True))
    print(f"{'per event':52s} {'without':>9s} {'with':>9s} {'added':>9s}")
    for what in before:
        print(f"{what:52s} {before[what]:7.0f}ns {after[what]:7.0f}ns {after[what] - before[what]:7.0f}ns")
    print(f"\n{'lesson (cells only)':24s} {'without':>9s} {'with':>9s} {'added':>8s}  flags")
    for lesson in args.lessons or lessons():
        plain, hooked = [], []
        for n in range(args.repeat):
            order = (False, True) if n % 2 == 0 else (True, False)
            for hook in order:
                (hooked if hook else plain).append(in_child(lambda: lesson_seconds(lesson, hook)))
        t0 = min(r["seconds"] for r in plain)
        t1 = min(r["seconds"] for r in hooked)
        flags = sorted({f for r in hooked for f in r["flags"]})
        print(f"{lesson:24s} {t0:8.2f}s {t1:8.2f}s {100 * (t1 - t0) / t0:+7.1f}%  {len(flags)}")
        for flag in flags:
            print("   ", flag)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
