"""Grade one synthetic class with serial `nbgrader autograde` and with `course grade`, in one run.

    PYTHONPATH=. python benchmarks/grading.py [--students 6] [--workers 2] [--lessons 01_setup ...]

The class: every lesson × N students cycling through correct, partly wrong (last exercise left
blank) and blank notebooks (tools/classroom.py; metadata-stripped ones are left out because plain
nbgrader crashes on them). Two copies of the same course (gradebook generated, nothing graded) are
graded: one by `nbgrader autograde LESSON` for each lesson (a real kernel per notebook, one after
another), one by `grader.grade` on all lessons at once with N sandboxed workers
(what `course grade --all --workers N` runs). Printed: seconds per notebook for both and their
ratio; the floor, i.e. the lessons' own cell time (measured inside the sandboxed runs, where the
imports are already paid) divided by the workers; whether the per-cell scores are identical; peak
memory (proportional set size, so pages a fork shares are counted once) of the largest worker and
of everything together. Setup (generating the assignments, training the default model) is not
timed. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons as all_lessons  # noqa: E402

CYCLE = ("correct", "partly", "blank", "correct", "partly", "correct")   # all gradable by plain nbgrader


def build(folder: Path, lessons: list[str], students: int) -> Path:
    """A course with every lesson generated and `students` submissions per lesson."""
    course = classroom.new_course(folder, lessons)
    for lesson in lessons:
        for k in range(students):
            classroom.hand_in(course, f"student{k + 1:02d}", lesson, classroom.submission(lesson, CYCLE[k % len(CYCLE)]))
    return course


# ----------------------------------------------------------------------------- memory of a process tree
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(p.name))
    return tree


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemorySampler:
    """Samples, every `every` seconds, the PSS of this process's descendants: in total, and per
    subtree rooted at a process whose command line contains `marker` (a worker or a kernel)."""

    # Each reading walks the page tables of every process (15-60 ms for one that has torch imported):
    # every 0.25 s, that took a share of a core from the graders being timed.
    def __init__(self, marker: str, every: float = 1.0):
        self.marker, self.every = marker, every
        self.peak_total = self.peak_unit = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _subtree(self, tree: dict, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(tree.get(p, []))
        return out

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            tree = _children()
            procs = self._subtree(tree, me)
            pss = {p: _pss(p) for p in procs}
            self.peak_total = max(self.peak_total, sum(pss.values()))
            for p in procs:
                if p != me and self.marker in _cmdline(p):
                    self.peak_unit = max(self.peak_unit, sum(pss.get(q, 0) for q in self._subtree(tree, p)))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- the two graders
def serial_nbgrader(course: Path, lessons: list[str]) -> tuple[float, MemorySampler]:
    with MemorySampler("ipykernel") as memory:
        start = time.perf_counter()
        for lesson in lessons:
            classroom.nbgrader(course, "autograde", lesson, "--create", "--force")
        seconds = time.perf_counter() - start
    return seconds, memory


def course_grade(course: Path, lessons: list[str], workers: int):
    from grader import grade
    with MemorySampler("grader.worker") as memory:
        start = time.perf_counter()
        report = grade(lessons, course, workers=workers, progress=False, log=lambda m: None)
        seconds = time.perf_counter() - start
    return seconds, report, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lessons", nargs="*", default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the graded courses in this folder")
    args = parser.parse_args()
    if args.students < 1 or args.workers < 1:
        parser.error("--students and --workers must be at least 1")
    lessons = args.lessons or all_lessons()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import warnings
    warnings.filterwarnings("ignore")
    from grader.grade import ensure_default_model
    ensure_default_model()                 # trained once and cached before timing (in a subprocess)
    base = Path(tempfile.mkdtemp(prefix="grading-bench-")) if args.keep is None else args.keep
    print(f"building the class: {len(lessons)} lessons × {args.students} students in {base}", flush=True)
    reference = build(base / "class", lessons, args.students)
    by_nbgrader = base / "nbgrader"
    by_course = base / "course"
    shutil.copytree(reference, by_nbgrader)
    shutil.copytree(reference, by_course)
    notebooks = len(lessons) * args.students

    print("grading with serial nbgrader autograde ...", flush=True)
    t_nbgrader, mem_nbgrader = serial_nbgrader(by_nbgrader, lessons)
    print(f"grading with course grade --workers {args.workers} ...", flush=True)
    t_course, report, mem_course = course_grade(by_course, lessons, args.workers)

    same = classroom.scores(by_nbgrader) == classroom.scores(by_course)
    floor = report.cell_seconds / args.workers
    mb = lambda b: f"{b / 2 ** 20:,.0f} MB"  # noqa: E731
    print(f"\n{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}; {notebooks} notebooks "
          f"({len(lessons)} lessons × {args.students} students)\n")
    print("| grader | total s | s / notebook | vs nbgrader | peak memory, one worker/kernel | peak memory, total |")
    print("|---|---|---|---|---|---|")
    print(f"| serial `nbgrader autograde` | {t_nbgrader:.1f} | {t_nbgrader / notebooks:.2f} | 1× | "
          f"{mb(mem_nbgrader.peak_unit)} | {mb(mem_nbgrader.peak_total)} |")
    print(f"| `course grade --workers {args.workers}` | {t_course:.1f} | {t_course / notebooks:.2f} | "
          f"{t_nbgrader / t_course:.1f}× faster | {mb(mem_course.peak_unit)} | {mb(mem_course.peak_total)} |")
    print(f"| floor: cell time ÷ {args.workers} workers | {floor:.1f} | {floor / notebooks:.2f} | "
          f"course grade is {t_course / floor:.2f}× the floor | | |")
    print(f"\nidentical per-cell scores: {'yes' if same else 'NO'}; statuses: "
          + ", ".join(f"{s} {report.count(s)}" for s in ("graded", "flagged", "missing", "failed")))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
