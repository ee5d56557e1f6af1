"""The lessons: the release matches its sources, and real nbgrader grades them as it should.

One session-scoped nbgrader course (a temporary copy) is graded once for three students:
`solver` hands in the solutions, `blank` hands in the release untouched, `onewrong` hands in the
solutions with exactly one exercise broken. Autograde executes every notebook in a real kernel.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from classroom import ONE_WRONG as BROKEN  # noqa: E402
from release import lessons, release  # noqa: E402

LESSONS = lessons()
EXPECTED = ["01_setup", "02_forward_hooks", "03_context_managers", "04_cam", "05_gradcam",
            "06_inner_layers", "07_keepdim", "08_any_model", "09_questionnaire", "10_nlp", "11_trust"]


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def read(path: Path):
    return nbformat.read(path, as_version=4)


def notebook_of(folder: Path, lesson: str) -> Path:
    found = sorted((folder / lesson).glob("*.ipynb"))
    assert len(found) == 1, f"{folder / lesson} should hold exactly one notebook, found {found}"
    return found[0]


def test_all_lessons_exist_in_order_in_both_folders():
    assert LESSONS == EXPECTED
    released = sorted(p.name for p in (ROOT / "notebooks").iterdir() if p.is_dir())
    assert released == EXPECTED


def test_release_is_what_nbgrader_generates_now(tmp_path):
    release(LESSONS, release_dir=tmp_path)
    for lesson in LESSONS:
        fresh, committed = notebook_of(tmp_path, lesson), notebook_of(ROOT / "notebooks", lesson)
        assert json.loads(fresh.read_text()) == json.loads(committed.read_text()), (
            f"notebooks/{lesson} is out of date: run `make release`")


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_holds_no_solution_and_no_hidden_test(lesson):
    source, student = read(notebook_of(ROOT / "solutions", lesson)), read(notebook_of(ROOT / "notebooks", lesson))
    text = json.dumps(student.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"{lesson}: release contains {marker!r}"
    by_id = {nbgrader_meta(c).get("grade_id"): c for c in student.cells if nbgrader_meta(c)}
    for cell in source.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            stub = by_id[meta["grade_id"]].source
            inside = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0] \
                if "### BEGIN SOLUTION" in cell.source else cell.source
            for line in filter(str.strip, inside.splitlines()):
                assert line.strip() not in stub, f"{lesson}/{meta['grade_id']}: solution line leaked: {line!r}"
        if meta.get("grade") and "### BEGIN HIDDEN TESTS" in cell.source:
            hidden = cell.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
            assert hidden.strip() and hidden.strip() not in by_id[meta["grade_id"]].source


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_graded_exercise_has_visible_and_hidden_tests(lesson):
    for cell in read(notebook_of(ROOT / "solutions", lesson)).cells:
        meta = nbgrader_meta(cell)
        if meta.get("grade") and not meta.get("solution"):
            visible = cell.source.split("### BEGIN HIDDEN TESTS")[0]
            assert "### BEGIN HIDDEN TESTS" in cell.source, f"{lesson}/{meta['grade_id']}: no hidden tests"
            assert "assert" in visible or "check_" in visible, f"{lesson}/{meta['grade_id']}: no visible test"


def test_no_cuda_anywhere():
    for lesson in LESSONS:
        for folder in ("solutions", "notebooks"):
            assert ".cuda()" not in notebook_of(ROOT / folder, lesson).read_text(), f"{folder}/{lesson}"


# ----------------------------------------------------------------------------- the nbgrader round trip
# The `graded` fixture (conftest.py) grades solver / blank / onewrong with real `nbgrader autograde`.


@pytest.mark.parametrize("lesson", LESSONS)
def test_solutions_run_without_error_and_get_full_marks(graded, lesson):
    course, scores = graded
    autograded = read(notebook_of(course / "autograded" / "solver", lesson))
    errors = [(c.get("id"), o.get("ename"), o.get("evalue")) for c in autograded.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"
              or (o.output_type == "stream" and o.name == "stderr" and nbgrader_meta(c).get("grade"))]
    assert not errors, f"{lesson}: the solution notebook raised or wrote stderr in a test cell: {errors}"
    cells = scores[("solver", lesson)]
    assert cells, f"{lesson}: no auto-graded cells"
    lost = {k: v for k, v in cells.items() if v[0] != v[1]}
    assert not lost, f"{lesson}: solutions lost points in {lost}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_untouched_release_scores_zero(graded, lesson):
    course, scores = graded
    assert notebook_of(course / "autograded" / "blank", lesson).exists()
    assert sum(score for score, _ in scores[("blank", lesson)].values()) == 0


@pytest.mark.parametrize("lesson, grade_id", [b[:2] for b in BROKEN])
def test_one_wrong_exercise_loses_exactly_its_points(graded, lesson, grade_id):
    _, scores = graded
    cells = scores[("onewrong", lesson)]
    broken = f"test_{grade_id}"
    assert broken in cells, f"no test cell named {broken}"
    for name, (score, max_score) in cells.items():
        assert score == (0 if name == broken else max_score), (name, score, max_score)
