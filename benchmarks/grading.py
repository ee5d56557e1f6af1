"""What one `course grade` call costs against serial `nbgrader autograde`, cold and warm, in one run.

    PYTHONPATH=. python benchmarks/grading.py [--workers 2] [--only 6 24 all ps1] [--baseline CHECKOUT]

Four calls an instructor makes, each graded three ways on copies of the same course (gradebook
generated, nothing graded):

- `one lesson × 6` and `one lesson × 24`: lesson 02 for 6 and 24 students cycling through correct,
  partly wrong and blank notebooks (tools/classroom.py);
- `every lesson in one call`: the eleven lessons × 3 students;
- `ps1`: nbgrader's own example course (plain Python, its two students), shipped with nbgrader.

The three ways: serial `nbgrader autograde` per lesson (a real kernel per notebook); `course grade`
**cold** (no warm pool running: the call starts one, its workers import what the lessons import);
`course grade` **warm** (the same call again on a fresh copy: the pool from the cold call is reused).
Each `course grade` call is a fresh Python process (`python benchmarks/grading.py --call …`, which
runs what `course grade` runs) timed whole, start-up included; the pool lives in a folder of the
benchmark's own. `--baseline CHECKOUT` adds a cold call of another checkout's `python -m grader
grade` (e.g. the commit before the warm pool) on the same copies.

Printed per row: seconds, the ratio to nbgrader and to the floor (the lessons' own cell time,
measured inside the sandboxed runs, ÷ workers). From the 6- and 24-student rows: the marginal
seconds per notebook, (t24 − t6) / 18, and the fixed cost of a call, t − students × marginal.
Per-cell scores must be identical to nbgrader's. Run it on an otherwise idle machine (about 20 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.argv[1:2] == ["--call"]:          # a `course grade` call: the control process starts as the command's does
    from grader import cli
    cli._light_imports()
from grader.layout import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons as all_lessons  # noqa: E402

CYCLE = ("correct", "partly", "blank", "correct", "partly", "correct")   # all gradable by plain nbgrader
LESSON = "02_forward_hooks"


# ----------------------------------------------------------------------------- the courses
def build(folder: Path, lessons: list[str], students: int) -> Path:
    """A course with the lessons generated and `students` submissions per lesson."""
    course = classroom.new_course(folder, lessons)
    for lesson in lessons:
        for k in range(students):
            classroom.hand_in(course, f"student{k + 1:02d}", lesson, classroom.submission(lesson, CYCLE[k % len(CYCLE)]))
    return course


# ----------------------------------------------------------------------------- the graders
def serial_nbgrader(course: Path, lessons: list[str]) -> float:
    start = time.perf_counter()
    for lesson in lessons:
        classroom.nbgrader(course, "autograde", lesson, "--create", "--force")
    return time.perf_counter() - start


def course_grade(course: Path, lessons: list[str], workers: int, pool_dir: Path) -> tuple[float, dict]:
    """One `course grade` call in a fresh Python: (wall seconds, what its report says)."""
    env = {**os.environ, "COURSE_POOL_DIR": str(pool_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("COURSE_POOL", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--call", str(course), "--workers", str(workers),
                           *lessons], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"course grade failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def baseline_grade(checkout: Path, course: Path, lessons: list[str], workers: int) -> float:
    """A call of another checkout's `python -m grader grade` (its own environment variables aside)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "COURSE_POOL": "off"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "grader", "grade", *lessons, "--course", str(course),
                           "--workers", str(workers), "--quiet"], env=env, cwd=str(checkout), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the baseline's course grade failed:\n{done.stderr[-3000:]}")
    return seconds


def one_call(course: Path, lessons: list[str], workers: int) -> None:
    """`--call`: what `course grade LESSONS --workers N --quiet` runs, with the report as JSON."""
    import warnings
    warnings.filterwarnings("ignore")
    from grader.grade import grade
    report = grade(lessons, course, workers=workers, progress=False, log=lambda m: None, pool=None)
    print(json.dumps({"cell_seconds": report.cell_seconds, "notebooks": report.notebooks,
                      "statuses": sorted({r.status for r in report.results})}))


# ----------------------------------------------------------------------------- one row
def measure(name: str, reference: Path, lessons: list[str], students: int, workers: int, base: Path,
            pool_dir: Path, baseline: Path | None) -> dict:
    from grader import pool
    print(f"{name}: serial nbgrader autograde ...", flush=True)
    copies = {way: base / f"{name}-{way}" for way in ("nbgrader", "cold", "warm", "baseline")}
    for way, folder in copies.items():
        if way != "baseline" or baseline:
            shutil.copytree(reference, folder)
    row = {"name": name, "students": students, "notebooks": students * len(lessons)}
    row["nbgrader"] = serial_nbgrader(copies["nbgrader"], lessons)
    if baseline:
        print(f"{name}: baseline course grade (cold) ...", flush=True)
        row["baseline"] = baseline_grade(baseline, copies["baseline"], lessons, workers)
    pool.stop(pool_dir)
    print(f"{name}: course grade, cold ...", flush=True)
    row["cold"], cold = course_grade(copies["cold"], lessons, workers, pool_dir)
    print(f"{name}: course grade, warm ...", flush=True)
    row["warm"], warm = course_grade(copies["warm"], lessons, workers, pool_dir)
    row["floor"] = warm["cell_seconds"] / workers
    row["notebooks"] = warm["notebooks"]
    expected = classroom.scores(copies["nbgrader"])
    row["same"] = all(classroom.scores(copies[way]) == expected for way in ("cold", "warm", "baseline")
                      if way != "baseline" or baseline)
    return row


def table(rows: list[dict], workers: int, baseline: Path | None) -> str:
    head = ["call", "notebooks", "serial nbgrader", "cold", "warm"] + (["before (cold)"] if baseline else []) + \
           ["cold vs nbgrader", "warm vs nbgrader", "cold / floor", "warm / floor", "floor", "same scores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(r["notebooks"]), f"{r['nbgrader']:.1f} s", f"{r['cold']:.1f} s", f"{r['warm']:.1f} s"]
        cells += [f"{r['baseline']:.1f} s"] if baseline else []
        cells += [f"{r['nbgrader'] / r['cold']:.1f}×", f"{r['nbgrader'] / r['warm']:.1f}×",
                  f"{r['cold'] / r['floor']:.2f}×", f"{r['warm'] / r['floor']:.2f}×", f"{r['floor']:.1f} s",
                  "yes" if r["same"] else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    by = {r["name"]: r for r in rows}
    six, many = by.get("one lesson × 6"), by.get("one lesson × 24")
    if six and many:
        lines.append("")
        ways = ["nbgrader", "cold", "warm"] + (["baseline"] if baseline else [])
        for way in ways:
            marginal = (many[way] - six[way]) / (many["notebooks"] - six["notebooks"])
            fixed = [r[way] - r["notebooks"] * marginal for r in (six, many)]
            lines.append(f"{way}: marginal {marginal:.2f} s / notebook; fixed cost of a call "
                         f"{fixed[0]:.1f} s (from × 6), {fixed[1]:.1f} s (from × 24)")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--call"]:
        args = sys.argv[2:]
        course, workers, lessons = Path(args[0]), int(args[2]), args[3:]
        return one_call(course, lessons, workers)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["6", "24", "all", "ps1"], choices=["6", "24", "all", "ps1"])
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout whose `python -m grader grade` to time too (cold), e.g. the commit before")
    parser.add_argument("--keep", type=Path, default=None, help="keep the graded courses in this folder")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import warnings
    warnings.filterwarnings("ignore")
    from grader.grade import ensure_default_model
    ensure_default_model()                 # trained once and cached before timing (in a subprocess)
    base = Path(tempfile.mkdtemp(prefix="grading-bench-")) if args.keep is None else args.keep
    pool_dir = base / "pool"
    pool_dir.mkdir(mode=0o700, parents=True)
    rows = []
    try:
        plan = {"6": ("one lesson × 6", [LESSON], 6), "24": ("one lesson × 24", [LESSON], 24),
                "all": ("every lesson in one call", all_lessons(), 3), "ps1": ("ps1", ["ps1"], 2)}
        for choice in args.only:
            name, lessons, students = plan[choice]
            print(f"building {name} in {base}", flush=True)
            reference = classroom.ps1_course(base / f"{name}-ref") if choice == "ps1" else build(base / f"{name}-ref", lessons, students)
            rows.append(measure(name, reference, lessons, students, args.workers, base, pool_dir, args.baseline))
    finally:
        from grader import pool
        pool.stop(pool_dir)
    print(f"\n{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, --workers {args.workers}\n")
    print(table(rows, args.workers, args.baseline))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    if not all(r["same"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
