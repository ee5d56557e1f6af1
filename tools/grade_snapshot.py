"""Snapshot the grades a checkout of this project gives two corpora, to compare grading code before and after a change.

The two corpora are the hostile class of tests/test_grader_grade.py (`build_class`, lesson 01_setup) and the
example class of `course demo`. Only the checkout's public command line is run (`python -m grader ...`, or
`-m course_utils` before the grader had a package of its own, in a subprocess with PYTHONPATH=<repo> and a
scratch working folder), so the same script measures old and new code.
Per corpus, student and lesson it keeps status, score, max_score, the export CSV's status column and every
auto-graded cell's score (autograded/<student>/<lesson>/course-grade.json).

    PYTHONPATH=REPO python tools/grade_snapshot.py --repo REPO --out snapshot.json    # several minutes
    python tools/grade_snapshot.py --compare OLD.json NEW.json                        # exit 1 if they differ
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run in a child with the checkout first on sys.path: makes a scratch course and hands in build_class's submissions.
BUILD_HOSTILE = """import sys; from pathlib import Path
repo, course, outside, port = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [str(repo), str(repo / "tests"), str(repo / "tools")]
import test_grader_grade as t
t.classroom.new_course(course, [t.LESSON])
outside.mkdir()
t.build_class(course, outside, port)
"""


def command(repo: Path) -> tuple[str, str]:
    """The `course` command as `-m MODULE` of that checkout (course_utils before the grader had its own package)."""
    return ("-m", "grader" if (repo / "grader" / "__main__.py").is_file() else "course_utils")


def run(repo: Path, cwd: Path, *args: str) -> str:
    """Run `python *args` with the checkout on PYTHONPATH; returns stdout, raises on a non-zero exit."""
    done = subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


def read_grades(repo: Path, work: Path, course: Path) -> dict[str, dict[str, dict]]:
    """student -> lesson -> status, score, max_score, export_status, cells, for every lesson graded in `course`."""
    lessons = sorted({p.name for p in course.glob("autograded/*/*") if p.is_dir()})
    grades: dict[str, dict[str, dict]] = {}
    for lesson in lessons:
        out = work / f"{course.name}-{lesson}.csv"
        run(repo, work, *command(repo), "export", lesson, "--course", str(course), "--to", str(out))
        with open(out, newline="") as f:
            for row in csv.DictReader(f):
                student = row["student_id"]
                result_file = course / "autograded" / student / lesson / "course-grade.json"
                result = json.loads(result_file.read_text()) if result_file.is_file() else {}
                grades.setdefault(student, {})[lesson] = {
                    "status": result.get("status", row["status"]),
                    "score": float(result.get("score", row["score"])),
                    "max_score": float(result.get("max_score", row["max_score"])),
                    "export_status": row["status"],
                    "cells": {gid: cell[0] for gid, cell in sorted(result.get("cells", {}).items())}}
    return grades


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(repo: Path, work: Path) -> dict:
    """Grade both corpora with the checkout `repo` in the scratch folder `work`."""
    seconds: dict[str, float] = {}
    start = time.monotonic()
    course = work / "hostile"
    run(repo, work, "-c", BUILD_HOSTILE, str(repo), str(course), str(work / "outside"), str(unused_port()))
    run(repo, work, *command(repo), "grade", "01_setup", "--course", str(course), "--quiet")
    hostile = read_grades(repo, work, course)
    seconds["hostile"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    run(repo, work, *command(repo), "demo", "--out", str(work / "example"))
    example = read_grades(repo, work, work / "example")
    seconds["example_class"] = round(time.monotonic() - start, 1)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
    return {"hostile": hostile, "example_class": example, "commit": commit.strip() + ("+dirty" if dirty else ""),
            "seconds": seconds}


def flatten(snap: dict) -> dict[tuple[str, str, str, str], object]:
    """(corpus, student, lesson, field) -> value; each cell is a field `cells.<grade_id>`."""
    flat: dict[tuple[str, str, str, str], object] = {}
    for corpus in ("hostile", "example_class"):
        for student, lessons in snap.get(corpus, {}).items():
            for lesson, entry in lessons.items():
                for field, value in entry.items():
                    if field == "cells":
                        flat.update({(corpus, student, lesson, f"cells.{g}"): s for g, s in value.items()})
                    else:
                        flat[(corpus, student, lesson, field)] = value
    return flat


def compare(old_file: Path, new_file: Path) -> int:
    """Print every (corpus, student, lesson, field) whose value differs; 1 if any, else 0."""
    old, new = (flatten(json.loads(Path(f).read_text())) for f in (old_file, new_file))
    missing = "<absent>"
    diffs = [(key, old.get(key, missing), new.get(key, missing)) for key in sorted(old.keys() | new.keys())
             if old.get(key, missing) != new.get(key, missing)]
    for (corpus, student, lesson, field), before, after in diffs:
        print(f"{corpus:<14} {student:<14} {lesson:<11} {field:<24} {before!s:>10} -> {after!s}")
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


def checkout_on_path() -> Path:
    """The checkout whose grader is importable (this one with PYTHONPATH=.); asked only when --repo is not given,
    so that --repo OLD works whatever OLD's layout."""
    from grader.layout import ROOT
    return ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="checkout to grade with (default: the one on PYTHONPATH)")
    parser.add_argument("--out", type=Path, help="where to write the snapshot JSON")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD.json", "NEW.json"), help="diff two snapshots")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("pass --out FILE.json (or --compare OLD.json NEW.json)")
    work = Path(tempfile.mkdtemp(prefix="grade-snapshot-"))
    print(f"grading in {work}", file=sys.stderr)
    try:
        snap = snapshot((args.repo or checkout_on_path()).resolve(), work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({snap['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
