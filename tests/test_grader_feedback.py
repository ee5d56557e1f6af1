"""Feedback pages never show hidden tests: `hide_tests` on the lessons' own source notebooks."""
from __future__ import annotations

import sys

import nbformat
import pytest

from grader.feedback import HIDDEN_NOTE, hide_tests
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons  # noqa: E402


@pytest.mark.parametrize("lesson", lessons())
def test_hidden_blocks_are_replaced_by_a_note_and_visible_checks_stay(lesson):
    source = nbformat.read(classroom.notebook_path(ROOT / "solutions", lesson), as_version=4)
    shown = hide_tests(source)
    hidden_cells = [i for i, c in enumerate(source.cells) if "BEGIN HIDDEN TESTS" in c.source]
    assert hidden_cells
    for i in hidden_cells:
        assert "BEGIN HIDDEN TESTS" not in shown.cells[i].source and HIDDEN_NOTE in shown.cells[i].source
        visible = source.cells[i].source.split("### BEGIN HIDDEN TESTS")[0].strip()
        assert shown.cells[i].source.startswith(visible)
    assert "BEGIN HIDDEN TESTS" in source.cells[hidden_cells[0]].source     # the input is left unchanged


def test_a_test_cell_keeps_only_the_error_message():
    cell = nbformat.v4.new_code_cell("assert f(1) == 2, 'f(1) should be 2'\n### BEGIN HIDDEN TESTS\n"
                                     "assert f(secret_input) == 42\n### END HIDDEN TESTS\n",
                                     metadata={"nbgrader": {"grade": True, "solution": False, "grade_id": "t",
                                                            "points": 1}})
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="f(secret) is wrong",
                                           traceback=["Traceback", "    assert f(secret_input) == 42"]),
                    nbformat.v4.new_output("stream", name="stderr", text="warning at\n  assert f(secret_input) == 42\n")]
    shown = hide_tests(nbformat.v4.new_notebook(cells=[cell]))
    text = nbformat.writes(shown)
    assert "secret_input" not in text
    assert shown.cells[0].outputs[0].traceback == ["AssertionError: f(secret) is wrong"]
