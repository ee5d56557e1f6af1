"""Shared fixtures: the default offline model, and one nbgrader course graded by real nbgrader."""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons  # noqa: E402


@pytest.fixture(scope="session")
def learn():
    """The course's default Learner (offline: compact_cnn on SynthPets, from the on-disk cache)."""
    from course_utils.model import get_learner
    return get_learner(online=False)   # tests never download, whatever $COURSE_ONLINE says


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium for the browser tests; never skipped (CI must run them)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser tests need Debian's chromium: run them with `make test` (it installs it "
                    "with tools/browser.sh) or `sudo apt-get install chromium`")
    return path


@pytest.fixture(scope="session")
def graded(tmp_path_factory, learn):
    """Every lesson graded by serial `nbgrader autograde` (a real kernel per notebook) for three
    students: `solver` hands in the solutions, `blank` the release untouched, `onewrong` the
    solutions with one exercise broken in some lessons (classroom.ONE_WRONG). Returns (course, scores) where
    scores[(student, lesson)] = {grade_id: (score, max_score)}. The course keeps a copy of the
    gradebook as it was before autograding, `gradebook-generated.db`, for other graders."""
    course = classroom.new_course(tmp_path_factory.mktemp("course"), lessons())
    shutil.copy(course / "gradebook.db", course / "gradebook-generated.db")
    for lesson in lessons():
        for student, origin in (("solver", course / "source"), ("blank", course / "release")):
            shutil.copytree(origin / lesson, course / "submitted" / student / lesson)
    for lesson, grade_id, wrong in classroom.ONE_WRONG:
        shutil.copytree(course / "source" / lesson, course / "submitted" / "onewrong" / lesson)
        path = classroom.notebook_path(course / "submitted" / "onewrong", lesson)
        nb = classroom.nbformat.read(path, as_version=4)
        cell, = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
        cell.source = wrong
        classroom.write(nb, path)
    for lesson in lessons():
        classroom.nbgrader(course, "autograde", lesson, "--create", "--force")
    return course, classroom.scores(course)
