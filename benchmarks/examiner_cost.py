"""What the examiner costs per notebook: one lesson graded with its tests in the examiner, and the
same lesson, same test code, graded in-process.

    PYTHONPATH=. python benchmarks/examiner_cost.py [--lesson 02_forward_hooks] [--students 24] [--rounds 3]

The in-process copy of the lesson differs by one name: its test cells call `examine` under another
name (imported in the setup cell), so `course grade` does not recognise them as examined and runs
them in the student's sandboxed process, as for a plain nbgrader assignment. Everything else (the
cells, the submissions, the sandbox, the workers) is the same, so the difference in seconds per
notebook is what the examiner adds: its fork per run, the setup cells it runs once per worker, the
questions and answers on the channel. The two courses are graded alternately, `--rounds` times
each, with `course grade --workers 2`'s engine (`grader.grade`); the model is trained before timing.
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

CYCLE = ("correct", "partly", "blank", "correct", "partly", "correct")
HIDDEN_NAME = "_examine_in_process"


def in_process_copy(lesson: str, root: Path) -> Path:
    """A course root holding `lesson` with its test cells calling examine under another name."""
    (root / "solutions").mkdir(parents=True)
    shutil.copytree(ROOT / "solutions" / lesson, root / "solutions" / lesson)
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    path = classroom.notebook_path(root / "solutions", lesson)
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code" and "import" in c.source)
    first.source += f"\nfrom course_utils.checks import examine as {HIDDEN_NAME}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("examine(globals())", f"{HIDDEN_NAME}(globals())")
    nbformat.write(nb, path)
    from grader.release import release
    release(root, [lesson], gradebook=False)
    return root


def build(folder: Path, lesson: str, students: int, root: Path) -> Path:
    course = classroom.new_course(folder, [lesson], root=root)
    for k in range(students):
        nb = classroom.submission(lesson, CYCLE[k % len(CYCLE)], root=root)
        classroom.hand_in(course, f"student{k + 1:02d}", lesson, nb)
    return course


def timed_grade(reference: Path, scratch: Path, lesson: str, workers: int) -> tuple[float, dict, str]:
    """Grade a fresh copy of `reference`; seconds, per-cell scores and the rows' statuses."""
    from grader.grade import grade
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(reference, scratch)
    start = time.perf_counter()
    report = grade([lesson], scratch, workers=workers, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - start
    reasons = {r.student_id: " ".join(r.reasons) for r in report.results}
    return seconds, classroom.scores(scratch), reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", default="02_forward_hooks")
    parser.add_argument("--students", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import warnings
    warnings.filterwarnings("ignore")
    from grader.grade import ensure_default_model
    ensure_default_model()
    base = Path(tempfile.mkdtemp(prefix="examiner-cost-"))
    examined = build(base / "examined", args.lesson, args.students, ROOT)
    in_process = build(base / "in-process", args.lesson, args.students, in_process_copy(args.lesson, base / "root"))
    times: dict[str, list[float]] = {"examined": [], "in-process": []}
    scores, labels = {}, {}
    for r in range(args.rounds):
        for name, course in (("examined", examined), ("in-process", in_process)):
            seconds, scores[name], reasons = timed_grade(course, base / f"run-{name}", args.lesson, args.workers)
            labels[name] = sum("graded in-process" in text for text in reasons.values())
            times[name].append(seconds)
            print(f"round {r + 1}: {name:10s} {seconds:6.1f} s", flush=True)
    assert scores["examined"] == scores["in-process"], "the two modes gave different scores"
    assert labels == {"examined": 0, "in-process": args.students}, labels
    n = args.students
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{os.cpu_count()} CPU cores; {args.lesson} × {n} students, --workers {args.workers}, "
          f"median of {args.rounds} alternating runs; per-cell scores identical\n")
    print("| tests run | s (median) | s / notebook | runs |")
    print("|---|---|---|---|")
    for k in ("in-process", "examined"):
        print(f"| {k} | {med[k]:.1f} | {med[k] / n:.2f} | {', '.join(f'{t:.1f}' for t in times[k])} |")
    print(f"| examiner's cost | {med['examined'] - med['in-process']:+.1f} | "
          f"{(med['examined'] - med['in-process']) / n:+.2f} | |")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
