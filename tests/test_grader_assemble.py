"""Re-assembly: the instructor's notebook with the student's answers, whatever the student did to it."""
from __future__ import annotations

import json
import os
import sys
import time

import nbformat
import pytest

from grader.assemble import (InstructorCell, UnreadableNotebook, assemble, find_notebooks,
                                             normalise_name, read_submission)
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "01_setup"


def gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


@pytest.fixture(scope="module")
def release():
    return nbformat.read(classroom.notebook_path(ROOT / "notebooks", LESSON), as_version=4)


@pytest.fixture(scope="module")
def instructor():
    """What the gradebook stores: locked and test cells with the instructor's source (hidden tests in)."""
    source = nbformat.read(classroom.notebook_path(ROOT / "solutions", LESSON), as_version=4)
    meta = lambda c: c.metadata.get("nbgrader", {})  # noqa: E731
    return {meta(c)["grade_id"]: InstructorCell(meta(c)["grade_id"], c.cell_type, c.source, bool(meta(c).get("locked")))
            for c in source.cells if meta(c).get("grade") or meta(c).get("locked")}


def by_id(nb) -> dict:
    return {gid(c): c for c in nb.cells if gid(c)}


def test_a_correct_submission_runs_with_its_answers_and_the_hidden_tests(release, instructor):
    a = assemble(classroom.submission(LESSON, "correct"), release, instructor)
    cells = by_id(a.notebook)
    assert cells["is_cat"].source == classroom.answers(LESSON)["is_cat"]
    assert "BEGIN HIDDEN TESTS" in cells["test_is_cat"].source
    assert a.repairs == []
    assert len(a.notebook.cells) == len(release.cells)


def test_stripped_metadata_is_matched_by_position_and_content(release, instructor):
    a = assemble(classroom.submission(LESSON, "stripped"), release, instructor)
    cells = by_id(a.notebook)
    for name, answer in classroom.answers(LESSON).items():
        assert cells[name].source == answer
    assert "BEGIN HIDDEN TESTS" in cells["test_prob_cat"].source
    assert len(a.repairs) == 1 and "nbgrader metadata was missing" in a.repairs[0]


def test_stripped_and_reordered_answers_still_land_in_their_cells(release, instructor):
    nb = classroom.submission(LESSON, "stripped")
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("my notes"))
    a = assemble(nb, release, instructor)
    assert by_id(a.notebook)["as_batch"].source == classroom.answers(LESSON)["as_batch"]


def test_deleted_and_edited_tests_come_back_from_the_gradebook(release, instructor):
    nb = classroom.submission(LESSON, "blank")
    nb.cells = [c for c in nb.cells if gid(c) != "test_is_cat"]
    for c in nb.cells:
        if gid(c) == "test_prob_cat":
            c.source = "pass"
    a = assemble(nb, release, instructor)
    cells = by_id(a.notebook)
    assert cells["test_is_cat"].source == instructor["test_is_cat"].source
    assert cells["test_prob_cat"].source == instructor["test_prob_cat"].source
    assert "test cell 'test_is_cat' was missing; the original was put back" in a.repairs
    assert "test cell 'test_prob_cat' was edited; the original was put back" in a.repairs


def test_added_cells_stay_in_place_and_can_never_be_graded(release, instructor):
    nb = classroom.submission(LESSON, "correct")
    fake = nbformat.v4.new_code_cell("print('mine')")
    fake.metadata["nbgrader"] = {"grade": True, "grade_id": "free_points", "points": 100, "locked": True,
                                 "solution": False, "schema_version": 3}
    index = next(i for i, c in enumerate(nb.cells) if gid(c) == "is_cat")
    nb.cells.insert(index + 1, fake)
    a = assemble(nb, release, instructor)
    i = next(i for i, c in enumerate(a.notebook.cells) if c.source == "print('mine')")
    assert gid(a.notebook.cells[i - 1]) == "is_cat"
    assert "nbgrader" not in a.notebook.cells[i].metadata
    assert i in a.student_cells


def test_a_duplicated_answer_cell_uses_the_first(release, instructor):
    nb = classroom.submission(LESSON, "correct")
    index = next(i for i, c in enumerate(nb.cells) if gid(c) == "cat_index")
    copy = nbformat.from_dict(json.loads(json.dumps(nb.cells[index])))
    copy.source = "cat_index = 0\n"
    nb.cells.insert(index + 1, copy)
    a = assemble(nb, release, instructor)
    assert by_id(a.notebook)["cat_index"].source == classroom.answers(LESSON)["cat_index"]


def test_student_cells_are_exactly_what_the_student_wrote(release, instructor):
    a = assemble(classroom.submission(LESSON, "blank"), release, instructor)
    assert {gid(a.notebook.cells[i]) for i in a.student_cells} == {"is_cat", "cat_index", "as_batch", "prob_cat"}


@pytest.mark.parametrize("name", ["Copy of 05_gradcam (1).ipynb", "05_gradcam-2.ipynb", "05_gradcam (3).ipynb",
                                  "05_gradcam copy.ipynb", "Copy of Copy of 05_gradcam.ipynb", "05_gradcam.ipynb"])
def test_browser_and_colab_renames_are_undone(name):
    assert normalise_name(name) == "05_gradcam"


def test_the_newest_of_several_renamed_copies_wins(tmp_path):
    old, new = tmp_path / "05_gradcam (1).ipynb", tmp_path / "Copy of 05_gradcam.ipynb"
    old.write_text("{}")
    new.write_text("{}")
    os.utime(old, (time.time() - 100, time.time() - 100))
    found, notes = find_notebooks(tmp_path, ["05_gradcam"])
    assert found == {"05_gradcam": new}
    assert any("was ignored" in n and "05_gradcam (1)" in n for n in notes)


def test_an_exact_name_beats_a_newer_copy(tmp_path):
    (tmp_path / "05_gradcam.ipynb").write_text("{}")
    (tmp_path / "05_gradcam (1).ipynb").write_text("{}")
    found, _ = find_notebooks(tmp_path, ["05_gradcam"])
    assert found["05_gradcam"].name == "05_gradcam.ipynb"


@pytest.mark.parametrize("content,why", [(b"", "is empty"), (b"   \n", "is empty"),
                                         (b'{"cells": [', "not valid notebook JSON"),
                                         (b"\xff\xfe", "not valid notebook JSON"),
                                         (b"[1, 2]", "not a notebook"), (b'{"cells": 3}', "not a notebook"),
                                         (b'{"cells": [{"cell_type": "code", "source": 5}], "metadata": {},'
                                          b' "nbformat": 4, "nbformat_minor": 5}', "x.ipynb")])
def test_unreadable_files_say_why(tmp_path, content, why):
    path = tmp_path / "x.ipynb"
    path.write_bytes(content)
    with pytest.raises(UnreadableNotebook, match=why):
        read_submission(path)
