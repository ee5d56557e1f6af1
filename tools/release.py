"""Regenerate the student release: `notebooks/` from the nbgrader sources in `solutions/`.

    make release          # or: PYTHONPATH=. python tools/release.py [lesson ...]

The work is `grader.release` (what `course release` runs), here without the
gradebook, so the repository gets no gradebook.db: solutions are replaced by stubs, hidden tests
are removed and outputs cleared. notebooks/ is never edited by hand; tests/test_notebooks.py
checks it is up to date.
"""
from __future__ import annotations

import sys
from pathlib import Path

from grader.gradebook import Course
from grader.layout import ROOT
from grader.release import lessons as course_lessons, release as release_lessons


def lessons() -> list[str]:
    """Every assignment in solutions/, in course order (their names start with the lesson number)."""
    return course_lessons(Course.open(ROOT))


def release(names: list[str], release_dir: Path | None = None) -> None:
    """Generate the student version of each lesson into release_dir (default: notebooks/)."""
    release_lessons(ROOT, names, gradebook=False, release_dir=release_dir)


if __name__ == "__main__":
    try:
        done = release_lessons(ROOT, sys.argv[1:], gradebook=False)
    except ValueError as e:
        raise SystemExit(str(e))
    print(f"released {len(done)} lesson(s) into notebooks/")
