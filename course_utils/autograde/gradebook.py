"""The course folder and nbgrader's gradebook: read the assignment, record each student's result.

Only the grader process calls these functions; nothing a sandboxed notebook produces is written
here except the outputs `score.executed` took from it. Results go where nbgrader puts them (the
gradebook and `autograded/<student>/<assignment>/`), so `nbgrader generate_feedback`, `nbgrader
export` and the formgrader work on them. What nbgrader has no place for (status and reasons) is
written next to the autograded notebook as `course-grade.json`, after the gradebook commit, and
marks the submission as done for a resumed run.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .assemble import InstructorCell

STATUSES = ("graded", "flagged", "missing", "failed")
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
        """nbgrader's Gradebook (it runs `alembic` from this Python's bin folder to create or upgrade it)."""
        from nbgrader.api import Gradebook
        here = str(Path(sys.executable).parent)
        if here not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([here, os.environ.get("PATH", "")])
        return Gradebook(self.db_url)


def check_lesson(name: str) -> str:
    """Return the lesson name if it is a plain folder name, else raise ValueError naming the fix."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"'{name}' is not a lesson name (a folder name in the course's source folder, e.g. 05_gradcam)")
    return name


def nbgrader_env(course: Course) -> dict:
    """Environment for nbgrader subprocesses: this Python's bin on PATH (nbgrader runs `alembic`)."""
    here = str(Path(sys.executable).parent)
    package_root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PATH": os.pathsep.join([here, os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


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


def result_path(course: Course, assignment: str, student: str) -> Path:
    return course.folder(course.autograded, student, assignment) / RESULT_FILE


def read_result(course: Course, assignment: str, student: str) -> dict | None:
    """The recorded status, reasons and fingerprint of a graded submission, or None."""
    try:
        return json.loads(result_path(course, assignment, student).read_text())
    except (OSError, ValueError):
        return None


def is_done(course: Course, assignment: str, student: str, print_: str) -> bool:
    """Was this exact submission graded and committed already?"""
    result = read_result(course, assignment, student)
    return bool(result) and result.get("fingerprint") == print_


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(course: Course, assignment: str, student: str, notebooks: dict[str, NotebookNode | None],
           status: str, reasons: list[str], print_: str, cells: dict | None = None) -> None:
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
        "score": score, "max_score": max_score, "fingerprint": print_, "cells": cells or {},
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


EXPORT_COLUMNS = ("student_id", "assignment", "score", "max_score", "status", "reasons")


def export_rows(course: Course, assignment: str) -> list[dict]:
    """One row per student known to the gradebook or present in submitted/, in EXPORT_COLUMNS order."""
    from nbgrader.api import MissingEntry
    require_gradebook(course, f"course grade {assignment}")
    with course.gradebook() as gb:
        try:
            max_score = float(gb.find_assignment(assignment).max_score)
        except MissingEntry:
            raise CourseError(f"'{assignment}' is not in the gradebook: run `course grade {assignment}` first") from None
        known = {s.id for s in gb.students}
    rows = []
    folders = course.submissions(assignment)
    for student in sorted(known | set(folders)):
        result = read_result(course, assignment, student)
        handed_in = student in folders and folders[student].is_dir()
        try:
            score, _ = submission_score(course, assignment, student)   # manual grades included
            status = result["status"] if result else "graded"
        except MissingEntry:
            score, status = 0.0, "missing"
        reasons = list(result["reasons"]) if result else []
        if status == "missing" and not reasons:
            reasons = [f"handed in but not graded yet: run `course grade {assignment}`" if handed_in
                       else "nothing was handed in"]
        elif result and handed_in and result.get("fingerprint") != fingerprint(folders[student]):
            reasons.append(f"handed in again after grading: run `course grade {assignment}` to grade the new version")
        rows.append({"student_id": student, "assignment": assignment, "score": round(score, 4),
                     "max_score": max_score, "status": status, "reasons": "; ".join(reasons)})
    return rows
