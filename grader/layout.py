"""Where things are: the one module that knows the repository's layout and the course's cache.

Everything else asks here, so moving a folder changes one line. Torch-free on purpose: the control
process (`course status`, `export`, the control side of `grade`) must start without importing torch.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent            # grader/
ROOT = PACKAGE.parent                                # the folder holding grader/ and course_utils/
COURSE_UTILS = ROOT / "course_utils"
SOLUTIONS = ROOT / "solutions"                       # nbgrader source notebooks (the single source of truth)
NOTEBOOKS = ROOT / "notebooks"                       # student versions generated from them
EXAMPLE_CLASS = ROOT / "examples" / "class"
TESTS = ROOT / "tests"


def is_checkout() -> bool:
    """Whether the grader runs from a checkout of the course repository (which is an nbgrader course)."""
    return (ROOT / "nbgrader_config.py").is_file()


def default_course() -> Path:
    """The course folder when none is named: this repository in a checkout, else the current folder."""
    return ROOT if is_checkout() else Path(".")


def cache_dir() -> Path:
    """Generated data and trained models: `$COURSE_CACHE` or ~/.cache/cnn-cam-course (as course_utils.data)."""
    env = os.environ.get("COURSE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "cnn-cam-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def python_path(extra: str | None = None) -> str:
    """A PYTHONPATH that finds grader and course_utils (plus `extra`, e.g. the caller's own)."""
    return os.pathsep.join(filter(None, [str(ROOT), extra]))
