"""Student-style submissions built from the lessons, so test classes stay in step with them.

A submission starts from the released notebook (what a student downloads) and gets answers typed
into its answer cells: the solution's code without nbgrader's markers. Used by the grading tests
and benchmarks/grading.py.

    correct   every answer filled in             partly   the last exercise left as released
    blank     the release untouched              stripped correct, nbgrader metadata removed
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from grader.layout import ROOT

KINDS = ("correct", "partly", "blank", "stripped")
# What the `onewrong` student of the tests breaks: (lesson, answer cell, what they typed), one exercise per lesson.
ONE_WRONG = [("01_setup", "is_cat", "def is_cat(name):\n    return name[0].islower()\n"),
             ("11_trust", "spearman_rank",      # Pearson of the values: no ranks
              "def average_ranks(v):\n    return v.flatten().double()\n\n"
              "def spearman_rank(a, b):\n    a, b = a.flatten().double(), b.flatten().double()\n"
              "    a, b = a - a.mean(), b - b.mean()\n"
              "    return float((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt())\n")]
_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.M)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def notebook_path(folder: Path, lesson: str) -> Path:
    """The one notebook of a lesson folder (solutions/ or notebooks/ layout)."""
    found = sorted((folder / lesson).glob("*.ipynb"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder / lesson} should hold exactly one notebook, found {len(found)}")
    return found[0]


def answers(lesson: str, root: Path = ROOT) -> dict[str, str]:
    """grade_id -> what a student would type in that answer cell (the solution, markers removed)."""
    source = nbformat.read(notebook_path(root / "solutions", lesson), as_version=4)
    return {_meta(c)["grade_id"]: _MARKERS.sub("", c.source).strip() + "\n"
            for c in source.cells if _meta(c).get("solution")}


def exercises(lesson: str, root: Path = ROOT) -> list[str]:
    """The lesson's answer cells (grade_ids), in notebook order."""
    return list(answers(lesson, root))


def submission(lesson: str, kind: str, root: Path = ROOT, wrong: dict[str, str] | None = None):
    """The notebook a student of this `kind` hands in; `wrong` overrides answers by grade_id."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    nb = nbformat.read(notebook_path(root / "notebooks", lesson), as_version=4)
    typed = {} if kind == "blank" else answers(lesson, root)
    if kind == "partly":
        typed.pop(exercises(lesson, root)[-1])
    typed.update(wrong or {})
    for cell in nb.cells:
        gid = _meta(cell).get("grade_id")
        if _meta(cell).get("solution") and gid in typed:
            cell.source = typed[gid]
    if kind == "stripped":
        strip_metadata(nb)
    return nb


def strip_metadata(nb) -> None:
    """Remove what some editors drop: every cell's nbgrader metadata (and the cell ids)."""
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        cell.pop("id", None)
    nb.nbformat_minor = 4


def write(nb, path: Path) -> Path:
    """Write a notebook as a browser download would (plain JSON, no validation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1))
    return path


def new_course(folder: Path, lessons: list[str], root: Path = ROOT, generate: bool = True) -> Path:
    """A scratch nbgrader course: the lessons' sources, the repository's settings, the gradebook."""
    from grader.workflow import new_course as scratch_course
    scratch_course(folder, lessons, root)
    if generate:
        for lesson in lessons:
            nbgrader(folder, "generate_assignment", lesson, "--force")
    return folder


PS1_STUDENTS = ("bitdiddle", "hacker")


def ps1_course(folder: Path) -> Path:
    """nbgrader's own example course `ps1` (plain Python) with its two students' submissions, from the
    user guide that ships inside the nbgrader package (no network), generated into a new course folder."""
    import nbgrader as package
    guide = Path(package.__file__).parent / "docs" / "source" / "user_guide"
    if not (guide / "source" / "ps1").is_dir():
        raise FileNotFoundError(f"nbgrader's example course is not at {guide}: this nbgrader ships no user guide")
    shutil.copytree(guide / "source" / "ps1", folder / "source" / "ps1")
    for student in PS1_STUDENTS:
        shutil.copytree(guide / "submitted" / student / "ps1", folder / "submitted" / student / "ps1")
    (folder / "nbgrader_config.py").write_text("c = get_config()\n")
    nbgrader(folder, "generate_assignment", "ps1", "--force")
    for student in PS1_STUDENTS:
        nbgrader(folder, "db", "student", "add", student)
    return folder


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an nbgrader command in `course` with this Python (nbgrader calls `alembic` from its bin)."""
    import os
    env = {**os.environ,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"], cwd=course,
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def hand_in(course: Path, student: str, lesson: str, nb, filename: str | None = None) -> Path:
    """Put a notebook where nbgrader expects it: submitted/<student>/<lesson>/<filename>."""
    return write(copy.deepcopy(nb), course / "submitted" / student / lesson / (filename or f"{lesson}.ipynb"))


def scores(course: Path) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(student, assignment) -> {grade_id: (score, max_score)} of every auto-graded cell in the gradebook."""
    from nbgrader.api import Gradebook
    found = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                for nb in sub.notebooks:
                    found[(sub.student.id, assignment.name)] = {
                        g.name: (g.score, g.max_score) for g in nb.grades if g.auto_score is not None}
    return found


def commit_result(course: Path, lesson: str, student: str, status: str = "graded", failing: tuple[str, ...] = (),
                  reasons: tuple[str, ...] = ()) -> None:
    """What `course grade` commits for one student, without running the notebook (fast graded states for
    tests): the instructor's notebook with every test passing but those in `failing`, under default limits."""
    from grader.gradebook import (Course, fingerprint, fingerprint_of_tests, key_parts, limits_fingerprint, record,
                                  result_key)
    from grader.sandbox import Limits
    from grader.score import score_cells
    c = Course.open(course)
    nb = None
    if status != "missing":
        nb = nbformat.read(notebook_path(ROOT / "solutions", lesson), as_version=4)
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") in failing:
                cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=[])]
    cells = {s.grade_id: [s.score, s.max_score, s.reason] for s in score_cells(nb)} if nb else {}
    parts = key_parts(fingerprint(c.folder(c.submitted, student, lesson)), fingerprint_of_tests(c, lesson),
                      limits_fingerprint(Limits()))
    record(c, lesson, student, {lesson: nb}, status, list(reasons), result_key(parts), cells, parts)


def course_command(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `course` command (`python -m grader ARGS`), as an instructor runs it; asserts success if `check`."""
    import os
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, (done.stdout, done.stderr)
    return done
