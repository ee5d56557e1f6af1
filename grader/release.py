"""`course release`: the student notebooks and the gradebook entries, generated from the sources.

Runs nbgrader's own `generate_assignment` per lesson in the course folder, so solutions become
stubs, hidden tests are removed and outputs cleared exactly as nbgrader does; with `gradebook=True`
the lesson's cells and points are recorded in the gradebook too (what grading and feedback read).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from .gradebook import Course, CourseError, nbgrader_env


@dataclasses.dataclass(frozen=True)
class Released:
    """One lesson's student version: where its notebooks are, and whether the gradebook has it."""
    lesson: str
    notebooks: tuple[Path, ...]
    in_gradebook: bool


def lessons(course: Course) -> list[str]:
    """The course's lessons: the folders of its source directory that hold a notebook, in order."""
    return [name for name in course.assignments() if any((course.root / course.source / name).glob("*.ipynb"))]


def release(course_dir: str | os.PathLike = ".", names: list[str] | None = None, gradebook: bool = True,
            release_dir: str | os.PathLike | None = None) -> list[Released]:
    """Generate the student version of each lesson (all when `names` is empty); see the module docstring."""
    course = Course.open(course_dir)
    known = lessons(course)
    names = list(names or known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise CourseError(f"no such lesson in {course.root / course.source}: {', '.join(unknown)}; "
                          f"choose from {', '.join(known) or '(none)'}")
    out = Path(release_dir).resolve() if release_dir else course.root / course.release
    extra = ([] if gradebook else ["--no-db"]) + ([f"--CourseDirectory.release_directory={out}"] if release_dir else [])
    done_list = []
    for name in names:
        cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force", "--log-level=WARN", *extra]
        done = subprocess.run(cmd, cwd=course.root, env=nbgrader_env(course), capture_output=True, text=True)
        if done.returncode:
            raise CourseError(f"nbgrader generate_assignment {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        done_list.append(Released(name, tuple(sorted((out / name).glob("*.ipynb"))), gradebook))
    return done_list
