"""nbgrader's own example course, `ps1` (plain Python, two students), graded by `course grade` and
by plain `nbgrader autograde`: the same per-cell scores, and every row says it was graded in-process.

Its test cells are plain code on the student's variables, as in any nbgrader course, so the
examiner cannot run them: they run in the student's (sandboxed) process, as nbgrader runs them.
The course ships inside the nbgrader package (its user guide), so the test needs no network.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

STUDENTS = classroom.PS1_STUDENTS


@pytest.fixture(scope="module")
def ps1(tmp_path_factory) -> Path:
    """A fresh course folder holding ps1's source and the two example students' submissions."""
    try:
        return classroom.ps1_course(tmp_path_factory.mktemp("ps1"))
    except FileNotFoundError as e:
        pytest.fail(str(e))


def course_grade(course: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "grader", "grade", "ps1", "--course", str(course), "--force",
                           "--workers", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=900)


def per_cell(course: Path) -> dict:
    """student -> {(notebook, grade_id): auto score} over both of ps1's notebooks."""
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {sub.student.id: {(nb.name, g.name): g.auto_score for nb in sub.notebooks for g in nb.grades
                                 if g.auto_score is not None}
                for sub in gb.find_assignment("ps1").submissions}


def test_course_grade_gives_nbgraders_per_cell_scores_and_says_in_process(ps1):
    done = course_grade(ps1)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = per_cell(ps1)
    assert set(ours) == set(STUDENTS) and all(ours.values()), ours
    rows = [line for line in done.stdout.splitlines() if line.strip().startswith("ps1")]
    assert len(rows) == 2 and all("graded in-process" in row for row in rows), done.stdout
    classroom.nbgrader(ps1, "autograde", "ps1", "--force")
    assert per_cell(ps1) == ours
