"""The course folder and nbgrader's gradebook: read the assignment, record each student's result.

Only the grader process calls these functions; nothing a sandboxed notebook produces is written
here except the outputs `score.executed` took from it. Results go where nbgrader puts them (the
gradebook and `autograded/<student>/<assignment>/`), so `nbgrader generate_feedback`, `nbgrader
export` and the formgrader work on them. What nbgrader has no place for (status and reasons) is
written next to the autograded notebook as `course-grade.json`, after the gradebook commit, and
marks the submission as done for a resumed run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import nbformat
from nbformat import NotebookNode

from . import layout
from .assemble import InstructorCell

STATUSES = ("graded", "flagged", "missing", "failed")      # what `course grade` records for a submission
NOT_GRADED = "not graded"                                  # handed in, but no current grade (see `outcome`)
OUTCOMES = (*STATUSES, NOT_GRADED)                          # what status, export, feedback and the demo show
RESULT_FILE = "course-grade.json"


class CourseError(ValueError):
    """The course folder or assignment is not usable; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Course:
    """An nbgrader course directory, read through nbgrader's own configuration."""
    root: Path
    source: str
    release: str
    submitted: str
    autograded: str
    db_url: str

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Course":
        """Read `root/nbgrader_config.py` (if any) the way nbgrader does."""
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config import Config
        from traitlets.config.loader import PyFileConfigLoader
        root = Path(root).resolve()
        if not root.is_dir():
            raise CourseError(f"{root} is not a folder: pass --course with an nbgrader course directory")
        config = Config()
        if (root / "nbgrader_config.py").is_file():
            config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
        cd = CourseDirectory(config=config)
        cd.root = str(root)
        return cls(root, cd.source_directory, cd.release_directory, cd.submitted_directory,
                   cd.autograded_directory, cd.db_url)

    def folder(self, step: str, student: str, assignment: str) -> Path:
        return self.root / step / student / assignment

    def assignments(self) -> list[str]:
        """The assignments of the course: the folders of its source directory, in order."""
        base = self.root / self.source
        if not base.is_dir():
            raise CourseError(f"{base} does not exist: a course needs its nbgrader source folder")
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def submissions(self, assignment: str) -> dict[str, Path]:
        """student id -> their submission folder for this assignment (folders only, no links)."""
        base = self.root / self.submitted
        if not base.is_dir():
            return {}
        return {p.name: p / assignment for p in sorted(base.iterdir())
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")}

    def gradebook(self):
        """nbgrader's Gradebook (it runs `alembic` from this Python's bin folder to create or upgrade it);
        inside `one_gradebook()`, the one already open."""
        from nbgrader.api import Gradebook
        if self.db_url in _open:
            return _Borrowed(_open[self.db_url])
        here = str(Path(sys.executable).parent)
        if here not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([here, os.environ.get("PATH", "")])
        return Gradebook(self.db_url)

    @contextlib.contextmanager
    def one_gradebook(self) -> Iterator[None]:
        """Within this block every `gradebook()` of this course is one open Gradebook: a command that
        reads it a dozen times (`course status`) opens it once (each open checks every table)."""
        if self.db_url in _open or not _has_gradebook(self):
            yield
            return
        with self.gradebook() as gb:
            _open[self.db_url] = gb
            try:
                yield
            finally:
                del _open[self.db_url]


_open: dict[str, Any] = {}         # db_url -> the Gradebook `Course.one_gradebook` holds open


class _Borrowed:
    """A Gradebook lent for a `with` block that must not close it."""

    def __init__(self, gb):
        self._gb = gb

    def __enter__(self):
        return self._gb

    def __exit__(self, *exc) -> None:
        pass


def check_lesson(name: str) -> str:
    """Return the lesson name if it is a plain folder name, else raise ValueError naming the fix."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"'{name}' is not a lesson name (a folder name in the course's source folder, e.g. 05_gradcam)")
    return name


def nbgrader_env(course: Course) -> dict:
    """Environment for nbgrader subprocesses: this Python's bin on PATH (nbgrader runs `alembic`)."""
    here = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([here, os.environ.get("PATH", "")]),
            "PYTHONPATH": layout.python_path(os.environ.get("PYTHONPATH"))}


def ensure_assignment(course: Course, assignment: str) -> list[str]:
    """Make sure the assignment is in the gradebook (generating it if not); return its notebook names."""
    from nbgrader.api import MissingEntry
    source = course.root / course.source / assignment
    if not source.is_dir() and not (course.root / course.release / assignment).is_dir():
        raise CourseError(f"no assignment '{assignment}': {source} does not exist")
    with course.gradebook() as gb:
        try:
            return sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)
        except MissingEntry:
            pass
    if not source.is_dir():
        raise CourseError(f"'{assignment}' is not in the gradebook and {source} does not exist to generate it from")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--force",
                           "--log-level=ERROR"], cwd=course.root, env=nbgrader_env(course),
                          capture_output=True, text=True)
    if done.returncode:
        raise CourseError(f"nbgrader generate_assignment {assignment} failed:\n{done.stderr[-2000:]}")
    with course.gradebook() as gb:
        return sorted(nb.name for nb in gb.find_assignment(assignment).notebooks)


def instructor_cells(course: Course, assignment: str, notebook: str) -> dict[str, InstructorCell]:
    """The gradebook's copy of the notebook's locked and test cells (hidden tests included)."""
    with course.gradebook() as gb:
        nb = gb.find_notebook(notebook, assignment)
        return {c.name: InstructorCell(c.name, c.cell_type, c.source, bool(c.locked)) for c in nb.source_cells}


def release_notebook(course: Course, assignment: str, notebook: str) -> NotebookNode:
    """The student version of the notebook, as released (what submissions are compared with)."""
    path = course.root / course.release / assignment / f"{notebook}.ipynb"
    if not path.is_file():
        raise CourseError(f"{path} is missing: run `nbgrader generate_assignment {assignment} --force`")
    return nbformat.read(path, as_version=4)


def fingerprint(folder: Path) -> str:
    """A hash of what the student handed in (names and contents), to tell a new submission from a graded one."""
    h = hashlib.sha256()
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                h.update(str(p.relative_to(folder)).encode() + b"\0")
                with open(p, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


# Bump when a change of the grader can change a score (scoring, assembly, the examiner's protocol):
# every result graded by an older version then counts as stale, and `course grade` regrades it.
GRADER_VERSION = "2026.12.3"


def fingerprint_of_tests(course: Course, assignment: str) -> str:
    """A hash of the lesson as released into the gradebook: its test and locked cells (hidden tests
    included), their points, and the released notebooks. A re-released, changed test changes it."""
    from nbgrader.api import MissingEntry
    h = hashlib.sha256()
    with course.gradebook() as gb:
        try:
            lesson = gb.find_assignment(assignment)
        except MissingEntry:
            return ""
        for nb in sorted(lesson.notebooks, key=lambda n: n.name):
            h.update(nb.name.encode() + b"\0")
            for c in sorted(nb.source_cells, key=lambda c: c.name):
                h.update(json.dumps([c.name, c.cell_type, c.source, bool(c.locked)]).encode())
            for g in sorted(nb.grade_cells, key=lambda g: g.name):
                h.update(json.dumps([g.name, float(g.max_score)]).encode())
            released = course.root / course.release / assignment / f"{nb.name}.ipynb"
            if released.is_file():
                h.update(hashlib.sha256(released.read_bytes()).digest())
    return h.hexdigest()


def limits_fingerprint(limits: Any) -> str:
    """The limits a run was graded under, as text (a dataclass of numbers)."""
    return json.dumps(dataclasses.asdict(limits), sort_keys=True)


def result_key(parts: dict[str, str]) -> str:
    """The one fingerprint of a result: submission, tests, grader version and limits together."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def key_parts(submission: str, tests: str, limits: str) -> dict[str, str]:
    """What a result depends on; any part changing makes it stale."""
    return {"submission": submission, "tests": tests, "grader": GRADER_VERSION, "limits": limits}


def result_path(course: Course, assignment: str, student: str) -> Path:
    return course.folder(course.autograded, student, assignment) / RESULT_FILE


def read_result(course: Course, assignment: str, student: str) -> dict | None:
    """The recorded status, reasons and fingerprint of a graded submission, or None."""
    try:
        return json.loads(result_path(course, assignment, student).read_text())
    except (OSError, ValueError):
        return None


def is_done(course: Course, assignment: str, student: str, print_: str) -> bool:
    """Was this exact submission graded and committed already, under the same tests, grader and limits?"""
    result = read_result(course, assignment, student)
    return bool(result) and result.get("fingerprint") == print_


def stale_because(result: dict, tests: str) -> str:
    """Why a result of an unchanged submission is out of date ('' if it is not): tests or grader changed."""
    parts = result.get("parts") or {}
    if not parts:
        return "graded before results recorded their tests"
    if tests and parts.get("tests") != tests:
        return "the lesson's tests were released again with changes since grading"
    if parts.get("grader") != GRADER_VERSION:
        return f"graded by grader {parts.get('grader')}, now {GRADER_VERSION}"
    return ""


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(course: Course, assignment: str, student: str, notebooks: dict[str, NotebookNode | None],
           status: str, reasons: list[str], print_: str, cells: dict | None = None,
           parts: dict[str, str] | None = None) -> None:
    """Commit one student's result: gradebook rows, autograded notebooks, then the result file.

    A notebook given as None (missing or unreadable) scores 0 in every graded cell.
    """
    from nbgrader.preprocessors import SaveAutoGrades
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    submitted = course.folder(course.submitted, student, assignment)
    timestamp = _timestamp(submitted)
    out_dir = course.folder(course.autograded, student, assignment)
    out_dir.mkdir(parents=True, exist_ok=True)
    with course.gradebook() as gb:
        gb.update_or_create_student(student)
        extra = {"timestamp": timestamp} if timestamp else {}
        gb.update_or_create_submission(assignment, student, **extra)
    for name, nb in notebooks.items():
        resources = {"nbgrader": {"db_url": course.db_url, "assignment": assignment, "notebook": name,
                                  "student": student}}
        if nb is None:
            _zero(course, assignment, name, student)
        else:
            SaveAutoGrades().preprocess(nb, resources)
            _atomic_write(out_dir / f"{name}.ipynb", nbformat.writes(nb))
        with course.gradebook() as gb:
            gb.find_submission_notebook(name, assignment, student).flagged = status == "flagged"
            gb.db.commit()
    if timestamp:
        _atomic_write(out_dir / "timestamp.txt", timestamp.isoformat(sep=" "))
    score, max_score = submission_score(course, assignment, student)
    _atomic_write(result_path(course, assignment, student), json.dumps({
        "student_id": student, "assignment": assignment, "status": status, "reasons": reasons,
        "score": score, "max_score": max_score, "fingerprint": print_, "parts": parts or {}, "cells": cells or {},
        "graded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, indent=1))


def _zero(course: Course, assignment: str, notebook: str, student: str) -> None:
    """Nothing to run: every graded cell of the notebook gets 0 automatically, as nbgrader does."""
    with course.gradebook() as gb:
        for grade in gb.find_submission_notebook(notebook, assignment, student).grades:
            grade.auto_score = 0
            grade.needs_manual_grade = False
        gb.db.commit()


def _timestamp(folder: Path) -> datetime.datetime | None:
    from nbgrader.utils import parse_utc
    path = folder / "timestamp.txt"
    try:
        return parse_utc(path.read_text().strip()) if path.is_file() else None
    except (ValueError, OverflowError):
        return None


def submission_score(course: Course, assignment: str, student: str) -> tuple[float, float]:
    """(score, max score) of a submission as nbgrader computes it."""
    with course.gradebook() as gb:
        sub = gb.find_submission(assignment, student)
        return float(sub.score), float(sub.max_score)


def require_gradebook(course: Course, fix: str) -> None:
    """Raise CourseError naming `fix` (a command) when the course has no gradebook file yet."""
    db = course.db_url.removeprefix("sqlite:///")
    if course.db_url.startswith("sqlite:///") and not Path(db).is_file():
        raise CourseError(f"{course.root} has no gradebook yet ({db}): run `{fix}` first")


def students(course: Course) -> list[str]:
    """Every student id the gradebook knows."""
    with course.gradebook() as gb:
        return sorted(s.id for s in gb.students)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Where one student stands on one lesson: what `course status`, `course export`, `course feedback`
    and the demo's gradebook table all show (they all get it from `outcome`)."""
    student_id: str
    assignment: str
    status: str                      # one of OUTCOMES
    score: float | None              # None when not graded: there is no grade yet (never a pretend 0)
    max_score: float | None          # None only when the lesson is not in the gradebook
    reasons: tuple[str, ...]
    result: dict | None              # the result file when it is this student's current grade, else None
    stale: str = ""                  # why this grade is out of date (tests or grader changed), '' if current


_EMPTY = hashlib.sha256().hexdigest()          # the fingerprint of an empty or absent folder


def _has_gradebook(course: Course) -> bool:
    """Is there a gradebook to read? (Opening a missing sqlite file would create it.)"""
    return not course.db_url.startswith("sqlite:///") or Path(course.db_url.removeprefix("sqlite:///")).is_file()


def _gradebook_scores(course: Course, assignment: str,
                      only: str | None = None) -> tuple[dict[str, float], float | None]:
    """({student: score} of the lesson's submissions in the gradebook (manual grades included), its max
    score), read in one session; ({}, None) when there is no gradebook or the lesson is not in it."""
    from nbgrader.api import MissingEntry
    if not _has_gradebook(course):
        return {}, None
    with course.gradebook() as gb:
        try:
            lesson = gb.find_assignment(assignment)
        except MissingEntry:
            return {}, None
        if only is None:
            return {sub.student.id: float(sub.score) for sub in lesson.submissions}, float(lesson.max_score)
        try:
            return {only: float(gb.find_submission(assignment, only).score)}, float(lesson.max_score)
        except MissingEntry:
            return {}, float(lesson.max_score)


def outcome(course: Course, assignment: str, student: str, *,
            _scores: tuple[dict[str, float], float | None] | None = None, _tests: str | None = None) -> Outcome:
    """The one place that decides a student's status on a lesson for display and export.

    - The result file `course grade` wrote is present and its fingerprint matches what is in
      `submitted/<student>/<lesson>/` now: its status (graded, flagged, failed or missing), the
      gradebook's score (manual grades included) and its reasons.
    - Something is handed in (a non-empty submission folder) but there is no result file — the
      grading run was killed or interrupted before this student, or never ran: "not graded",
      "handed in but not graded yet: run `course grade LESSON`". What a killed run may have left
      in the gradebook is not shown: only the result file, written last, makes a grade current.
    - There is a result file but the folder changed since (handed in again, replaced by `course
      collect`): "not graded", "handed in again after grading: run `course grade LESSON` to grade
      the new version (previous grade 4/6)" — the stale grade is in the reason, never in the score.
      If the folder was emptied instead, the reason says the graded files are gone.
    - Nothing handed in and nothing recorded: "missing", 0 ("no notebook was handed in").

    The score of a "not graded" student is None: the CSV exports write it as an empty cell,
    which Canvas and Moodle read as "no grade" (Moodle's CSV import maps '' and '-' to no grade;
    Canvas leaves a blank cell ungraded and out of the current score), whereas a 0 would be
    imported as a grade. Running `course grade LESSON` again grades exactly these students:
    `grade` skips only submissions whose result file has the same fingerprint.

    A student whose `submitted/<student>/` folder does not exist at all is one `course grade`
    never looks at, so a result file recorded for them stays their grade.

    A grade of an unchanged submission stays the grade when the lesson's tests are released again
    with changes or the grader's version changes, but `stale` says why it is out of date (`course
    status` counts these, `course grade LESSON` regrades exactly them).
    """
    base = course.root / course.submitted / student
    present = base.is_dir() and not base.is_symlink()            # as Course.submissions (what grade() grades)
    now = fingerprint(base / assignment) if present else _EMPTY
    result = read_result(course, assignment, student)
    scores, max_score = _scores or _gradebook_scores(course, assignment, only=student)
    score = scores.get(student)
    max_score = max_score if max_score is not None else (result or {}).get("max_score")
    run = f"run `course grade {assignment}`"
    graded = (result or {}).get("parts", {}).get("submission") or (result or {}).get("fingerprint")
    if result and result.get("status") in STATUSES and (not present or graded == now):
        reasons = tuple(result.get("reasons") or ())
        if result["status"] == "missing" and not reasons:
            reasons = ("no notebook was handed in",)
        score = score if score is not None else float(result.get("score") or 0.0)
        tests = _tests if _tests is not None else (fingerprint_of_tests(course, assignment) if _has_gradebook(course) else "")
        return Outcome(student, assignment, result["status"], score, max_score, reasons, result,
                       stale_because(result, tests))
    if result:
        # The previous grade is the result file's own (the gradebook may already hold part of a killed regrade).
        old, top = result.get("score"), result.get("max_score")
        previous = f"previous grade {old:g}/{top:g}" if isinstance(old, (int, float)) and isinstance(top, (int, float)) \
            else "graded before"
        previous += f", {result['status']}" if result.get("status", "graded") != "graded" else ""
        why = (f"handed in again after grading: {run} to grade the new version ({previous})" if now != _EMPTY else
               f"the files graded earlier are no longer in {course.submitted}/{student}/{assignment}: {run} "
               f"to record that nothing is handed in ({previous})")
        return Outcome(student, assignment, NOT_GRADED, None, max_score, (why,), None)
    if now != _EMPTY:
        return Outcome(student, assignment, NOT_GRADED, None, max_score,
                       (f"handed in but not graded yet: {run}",), None)
    return Outcome(student, assignment, "missing", 0.0, max_score, ("no notebook was handed in",), None)


def everyone(course: Course, assignment: str) -> list[str]:
    """The students of a lesson: every student the gradebook knows and every folder in submitted/."""
    known = set(students(course)) if _has_gradebook(course) else set()
    return sorted(known | set(course.submissions(assignment)))


def outcomes(course: Course, assignment: str) -> list[Outcome]:
    """`outcome` of every student of the lesson (`everyone`), by student id (the gradebook read once)."""
    scores = _gradebook_scores(course, assignment)
    tests = fingerprint_of_tests(course, assignment) if _has_gradebook(course) else ""
    return [outcome(course, assignment, sid, _scores=scores, _tests=tests) for sid in everyone(course, assignment)]


EXPORT_COLUMNS = ("student_id", "assignment", "score", "max_score", "status", "reasons")


def export_rows(course: Course, assignment: str, include_unreviewed: bool = False) -> list[dict]:
    """One row per student known to the gradebook or present in submitted/, in EXPORT_COLUMNS order.

    The status and reasons are `outcome`'s, then the review decision and the late deduction
    (`final.final_grade`); the score is the one that leaves: empty for a student not graded, and
    for a flagged submission nobody reviewed (unless `include_unreviewed`).
    """
    from nbgrader.api import MissingEntry
    from .final import final_grades
    require_gradebook(course, f"course grade {assignment}")
    with course.gradebook() as gb:
        try:
            max_score = float(gb.find_assignment(assignment).max_score)
        except MissingEntry:
            raise CourseError(f"'{assignment}' is not in the gradebook: run `course grade {assignment}` first") from None
    finals = final_grades(course, assignment, outcomes(course, assignment), include_unreviewed)
    return [{"student_id": f.outcome.student_id, "assignment": assignment,
             "score": "" if f.score is None else f.score, "max_score": max_score,
             "status": f.outcome.status, "reasons": "; ".join((*f.outcome.reasons, *f.notes))}
            for f in finals.values()]
