"""Honest outcomes: a submission no grading run reached, or handed in again since, is "not graded" with
its reason everywhere (`course status`, both exports, the feedback page, the demo's table); "missing"
still means nothing was handed in.

One scratch course (lesson 01_setup, worth 6) is graded without running notebooks: results are
committed with `gradebook.record`, as `course grade` does after a run (nbgrader's SaveAutoGrades
scores the notebook given, the gradebook rows come first, the result file last), so each case is the
state a real run leaves:

    solver      handed in, graded 6/6
    waiting     handed in, never reached by a run (it was killed or interrupted before them)
    killed      handed in; the run died after the gradebook rows and before the result file
    again       graded 4/6 (prob_cat's test failed), then handed in a new version
    nonotebook  handed in notes.pdf only, graded "missing" (as `course grade` records it)
    absent      on the roster, nothing handed in
"""
from __future__ import annotations

import csv
import html
import re
import sys
from pathlib import Path

import pytest

from grader import gradebook
from grader.gradebook import (NOT_GRADED, Course, fingerprint, fingerprint_of_tests, is_done, key_parts,
                              limits_fingerprint, outcome, result_key)
from grader.sandbox import Limits
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*not in session")    # SQLAlchemy notes from nbgrader's API

LESSON = "01_setup"
WAITING = f"handed in but not graded yet: run `course grade {LESSON}`"
AGAIN = f"handed in again after grading: run `course grade {LESSON}` to grade the new version (previous grade 4/6)"


course_command = classroom.course_command


def commit(course: Course, student: str, status: str = "graded", failing: tuple[str, ...] = (),
           reasons: tuple[str, ...] = ()) -> None:
    """What `course grade` commits for one student, without running the notebook."""
    classroom.commit_result(course.root, LESSON, student, status, failing, reasons)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    folder = classroom.new_course(tmp_path_factory.mktemp("outcome") / "course", [LESSON])
    c = Course.open(folder)
    for student in ("solver", "waiting", "killed"):
        classroom.hand_in(folder, student, LESSON, classroom.submission(LESSON, "correct"))
    commit(c, "solver")
    commit(c, "killed")
    gradebook.result_path(c, LESSON, "killed").unlink()          # the run died before the result file
    classroom.hand_in(folder, "again", LESSON, classroom.submission(LESSON, "partly"))
    commit(c, "again", failing=("test_prob_cat",))
    classroom.hand_in(folder, "again", LESSON, classroom.submission(LESSON, "correct"))   # handed in again
    (folder / "submitted" / "nonotebook" / LESSON).mkdir(parents=True)
    (folder / "submitted" / "nonotebook" / LESSON / "notes.pdf").write_bytes(b"%PDF-1.4\n")
    commit(c, "nonotebook", status="missing", reasons=(f"no notebook {LESSON}.ipynb was handed in",))
    with c.gradebook() as gb:
        gb.update_or_create_student("absent", first_name="Ab", last_name="Sent")
    return folder


def test_the_outcome_of_each_case(course):
    c = Course.open(course)
    found = {o.student_id: (o.status, o.score, o.reasons) for o in gradebook.outcomes(c, LESSON)}
    assert found == {
        "absent": ("missing", 0.0, ("no notebook was handed in",)),
        "again": (NOT_GRADED, None, (AGAIN,)),
        "killed": (NOT_GRADED, None, (WAITING,)),
        "nonotebook": ("missing", 0.0, (f"no notebook {LESSON}.ipynb was handed in",)),
        "solver": ("graded", 6.0, ()),
        "waiting": (NOT_GRADED, None, (WAITING,)),
    }
    with c.gradebook() as gb:       # what the killed run left in the gradebook is not shown as a grade
        assert gb.find_submission(LESSON, "killed").score == 6


def test_not_graded_is_exactly_what_course_grade_would_grade(course):
    """`course grade` skips a submission only when its result file has the same fingerprint (is_done)."""
    c = Course.open(course)
    tests, limits = fingerprint_of_tests(c, LESSON), limits_fingerprint(Limits())
    for student, folder in c.submissions(LESSON).items():
        would_grade = not is_done(c, LESSON, student, result_key(key_parts(fingerprint(folder), tests, limits)))
        assert (outcome(c, LESSON, student).status == NOT_GRADED) == would_grade, student


def test_status_counts_not_graded_apart_from_missing_and_says_why(course):
    out = course_command("status", "--course", str(course)).stdout
    head, row = out.splitlines()[:2]
    assert head.split() == ["lesson", "released", "collected", "graded", "flagged", "failed", "missing", "not",
                            "graded", "to", "review", "stale", "exported"]
    assert row.split()[:8] == [LESSON, "yes", "5", "1", "0", "0", "2", "3"]
    assert f"{LESSON}  again  {AGAIN}".split() == _line(out, "again").split()
    assert f"{LESSON}  waiting  {WAITING}".split() == _line(out, "waiting").split()
    assert f"{LESSON}  killed  {WAITING}".split() == _line(out, "killed").split()
    assert "absent" not in out and "nonotebook" not in out


def _line(text: str, student: str) -> str:
    lines = [line for line in text.splitlines() if line.split()[:1] == [student] or f" {student} " in line]
    assert len(lines) == 1, (student, text)
    return lines[0]


def test_the_lesson_export_says_not_graded_with_the_reason_and_no_score(course, tmp_path):
    course_command("export", LESSON, "--course", str(course), "--to", str(tmp_path / "lesson.csv"))
    with open(tmp_path / "lesson.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert {sid: (r["score"], r["status"], r["reasons"]) for sid, r in rows.items()} == {
        "absent": ("0.0", "missing", "no notebook was handed in"),
        "again": ("", NOT_GRADED, AGAIN),
        "killed": ("", NOT_GRADED, WAITING),
        "nonotebook": ("0.0", "missing", f"no notebook {LESSON}.ipynb was handed in"),
        "solver": ("6.0", "graded", ""),
        "waiting": ("", NOT_GRADED, WAITING),
    }
    assert {r["max_score"] for r in rows.values()} == {"6.0"}


def test_the_all_lessons_export_leaves_no_pretend_zero(course, tmp_path):
    """An LMS import reads an empty cell as "no grade"; a 0 would be imported as a grade."""
    course_command("export", "--course", str(course), "--to", str(tmp_path / "grades.csv"))
    with open(tmp_path / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert {sid: (r[LESSON], r["total"]) for sid, r in rows.items()} == {
        "absent": ("0.0", "0.0"), "nonotebook": ("0.0", "0.0"), "solver": ("6.0", "6.0"),
        "again": ("", ""), "killed": ("", ""), "waiting": ("", ""),
    }
    assert rows["absent"]["first_name"] == "Ab"


def _summary(path: Path) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", path.read_text().split("</section>")[0])).split())


def test_the_feedback_page_says_not_graded_and_why(course):
    out = course_command("feedback", LESSON, "--course", str(course)).stdout
    assert re.search(r"waiting\s.*\snot graded\s", out)
    pages = {sid: course / "feedback" / sid / LESSON / f"{LESSON}.html"
             for sid in ("solver", "waiting", "killed", "again", "absent")}
    waiting = _summary(pages["waiting"])
    assert "waiting: – / 6 (not graded)" in waiting and WAITING in waiting
    assert "not graded yet" in waiting and "0 / 6" not in waiting
    killed = _summary(pages["killed"])
    assert "(not graded)" in killed and WAITING in killed and "6 / 6" not in killed
    again = _summary(pages["again"])
    assert "again: – / 6 (not graded)" in again and AGAIN in again
    assert "hidden tests" not in pages["again"].read_text()       # the stale autograded notebook is not shown
    solver = _summary(pages["solver"])
    assert "solver: 6 / 6 (graded)" in solver and "test_prob_cat 2 / 2 all points" in solver
    absent = _summary(pages["absent"])
    assert "absent: 0 / 6 (missing)" in absent and "no notebook was handed in: every exercise scores 0" in absent


def test_the_feedback_pages_of_the_library(course):
    from grader.feedback import feedback
    pages = {p.student_id: p for p in feedback(LESSON, course, students=["waiting", "again", "solver"])}
    assert {sid: (p.status, p.notes) for sid, p in pages.items()} == {
        "waiting": (NOT_GRADED, (WAITING,)), "again": (NOT_GRADED, (AGAIN,)), "solver": ("graded", ())}
    assert all(e.score is None for e in pages["waiting"].exercises)


def test_the_demo_table_shows_not_graded_and_why(course):
    from grader.overview import gradebook_table
    table = gradebook_table(course, [LESSON])
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:7]}
    assert rows == {"absent": ["0/6", "missing"], "again": ["–/6", "not", "graded"],
                    "killed": ["–/6", "not", "graded"], "nonotebook": ["0/6", "missing"],
                    "solver": ["6/6", "graded"], "waiting": ["–/6", "not", "graded"]}
    for student, why in (("again", AGAIN), ("killed", WAITING), ("waiting", WAITING)):
        assert f"  {student} {LESSON}: {why}" in table.splitlines()


def test_a_submission_emptied_after_grading_is_not_graded_either(tmp_path):
    """The files graded are gone but the student's folder is there: the next `course grade` records
    "missing", so until then the old grade is not shown as current."""
    folder = classroom.new_course(tmp_path / "course", [LESSON])
    c = Course.open(folder)
    classroom.hand_in(folder, "gone", LESSON, classroom.submission(LESSON, "correct"))
    commit(c, "gone")
    assert outcome(c, LESSON, "gone").status == "graded"
    for p in (folder / "submitted" / "gone" / LESSON).iterdir():
        p.unlink()
    o = outcome(c, LESSON, "gone")
    assert (o.status, o.score) == (NOT_GRADED, None)
    assert o.reasons == (f"the files graded earlier are no longer in submitted/gone/{LESSON}: run `course grade "
                         f"{LESSON}` to record that nothing is handed in (previous grade 6/6)",)
