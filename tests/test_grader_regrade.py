"""Regrading follows the tests: a changed test cell counts once it is released, and then exactly the
submissions it grades are graded again, without --force; `--student` regrades one.

A scratch course with two lessons (01_setup and 02_forward_hooks, two students each) is graded for
real with `course grade --all`. Then a hidden test of 01_setup is made stricter in the source
notebook (it now fails for everyone): `course grade` warns that the source and the released tests
differ and grades nothing; after `course release 01_setup` it grades 01_setup's two submissions
again — with the new test's scores — and leaves 02_forward_hooks alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*not in session")

LESSONS = ["01_setup", "02_forward_hooks"]
STRICTER = "\nassert False, 'a stricter test (changed after grading)'"


def course_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True, text=True,
                          timeout=1200, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    return done


def graded_now(done: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    return {tuple(line.split()[:2]) for line in done.stdout.splitlines()[1:] if line.startswith("  ")}


def scores(course: Path) -> dict[tuple[str, str], float]:
    return {key: sum(s for s, _ in cells.values()) for key, cells in classroom.scores(course).items()}


@pytest.fixture(scope="module")
def course(tmp_path_factory, learn) -> Path:
    folder = classroom.new_course(tmp_path_factory.mktemp("regrade") / "course", LESSONS)
    for lesson in LESSONS:
        for student in ("ada", "bo"):
            classroom.hand_in(folder, student, lesson, classroom.submission(lesson, "correct"))
    first = course_command("grade", "--all", "--course", str(folder), "--workers", "2", "--quiet")
    assert len(graded_now(first)) == 4
    return folder


def test_a_changed_test_counts_once_released_and_then_exactly_its_submissions_are_regraded(course):
    before = scores(course)
    source = course / "source" / "01_setup" / "01_setup.ipynb"
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_is_cat")
    cell.source += STRICTER
    nbformat.write(nb, source)

    unreleased = course_command("grade", "--all", "--course", str(course), "--quiet")
    assert graded_now(unreleased) == set() and "4 already graded" in unreleased.stdout
    assert "source's test cells differ from the released ones (test_is_cat)" in unreleased.stderr
    status = course_command("status", "--course", str(course)).stdout
    assert [line.split()[9] for line in status.splitlines()[1:3]] == ["0", "0"]        # nothing stale yet

    course_command("release", "01_setup", "--course", str(course))
    status = course_command("status", "--course", str(course)).stdout
    assert [line.split()[9] for line in status.splitlines()[1:3]] == ["2", "0"]        # 01_setup's two are stale
    again = course_command("grade", "--all", "--course", str(course), "--workers", "2", "--quiet")
    assert graded_now(again) == {("01_setup", "ada"), ("01_setup", "bo")}
    assert "2 already graded" in again.stdout and "differ" not in again.stderr
    after = scores(course)
    for student in ("ada", "bo"):
        assert after[(student, "01_setup")] == before[(student, "01_setup")] - 1      # test_is_cat's point is lost
        assert after[(student, "02_forward_hooks")] == before[(student, "02_forward_hooks")]
    assert graded_now(course_command("grade", "--all", "--course", str(course), "--quiet")) == set()


def test_one_student_is_regraded_on_request(course):
    done = course_command("grade", "02_forward_hooks", "--student", "bo", "--course", str(course), "--quiet")
    assert graded_now(done) == {("02_forward_hooks", "bo")}
