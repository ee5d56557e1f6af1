"""The instructor's term: review decisions, nothing unreviewed leaves, stale results, late work.

One scratch course (lesson 01_setup, worth 6) whose results are committed with `gradebook.record`
as `course grade` commits them (no notebook is run here; tests/test_grader_regrade.py grades for
real). Each test starts from its own copy of the course, so decisions and configs do not leak.
"""
from __future__ import annotations

import csv
import datetime
import json
import shutil
import sys
from pathlib import Path

import pytest

from grader import gradebook, review
from grader.gradebook import Course, outcome
from grader.late import ConfigError, notebook_hash, read_config, record_path
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*not in session")

LESSON = "01_setup"
FLAG = "flagged for review: cell 'is_cat': line 1: reads the grading environment"


course_command = classroom.course_command


def commit(course: Course, student: str, status: str = "graded", failing: tuple[str, ...] = (),
           reasons: tuple[str, ...] = ()) -> None:
    """What `course grade` commits for one student, without running the notebook."""
    classroom.commit_result(course.root, LESSON, student, status, failing, reasons)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = classroom.new_course(tmp_path_factory.mktemp("term") / "course", [LESSON])
    c = Course.open(folder)
    for student in ("honest", "sneaky", "partial"):
        classroom.hand_in(folder, student, LESSON, classroom.submission(LESSON, "correct"))
    commit(c, "honest")
    commit(c, "sneaky", status="flagged", reasons=(FLAG,))
    commit(c, "partial", failing=("test_prob_cat",))
    return folder


@pytest.fixture
def course(pristine, tmp_path) -> Path:
    copy = tmp_path / "course"
    shutil.copytree(pristine, copy, symlinks=True)
    config = copy / "nbgrader_config.py"
    if config.is_file():            # the gradebook's address may name the original folder
        config.write_text(config.read_text().replace(str(pristine), str(copy)))
    return copy


def export_all(course: Path, *extra: str) -> tuple[dict[str, dict], str]:
    out = course / "grades.csv"
    done = course_command("export", "--course", str(course), "--to", str(out), *extra)
    with open(out, newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}, done.stdout


# ----------------------------------------------------------------------------- review
def test_an_unreviewed_flagged_score_is_in_no_export_and_is_listed(course):
    rows, said = export_all(course)
    assert rows["sneaky"][LESSON] == "" and rows["sneaky"]["total"] == "", rows["sneaky"]
    assert rows["honest"][LESSON] == "6.0" and rows["partial"][LESSON] == "4.0"
    assert "sneaky" in said and "flagged, not reviewed" in said
    course_command("export", LESSON, "--course", str(course), "--to", str(course / "lesson.csv"))
    with open(course / "lesson.csv", newline="") as f:
        lesson = {r["student_id"]: r for r in csv.DictReader(f)}
    assert lesson["sneaky"]["score"] == "" and lesson["sneaky"]["status"] == "flagged"
    assert "held back" in lesson["sneaky"]["reasons"]


def test_include_unreviewed_marks_them(course):
    rows, _ = export_all(course, "--include-unreviewed")
    assert rows["sneaky"][LESSON] == "6.0" and rows["sneaky"]["unreviewed"] == LESSON
    assert rows["honest"]["unreviewed"] == ""


def test_a_decision_is_stored_with_its_time_and_lets_the_score_leave(course):
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    done = course_command("review", LESSON, "--course", str(course), "--student", "sneaky", "--set", "2",
                          "--note", "os.getenv is used to read a path; the answer is hard-coded")
    assert "set to 2 (computed 6)" in done.stdout
    made = review.history(Course.open(course), LESSON)["sneaky"]
    assert len(made) == 1 and made[0].action == "set" and made[0].score == 2 and made[0].computed == 6
    assert datetime.datetime.fromisoformat(made[0].decided_at) >= before
    assert "hard-coded" in made[0].note
    rows, said = export_all(course)
    assert rows["sneaky"][LESSON] == "2.0" and "sneaky" not in said
    listed = course_command("review", LESSON, "--course", str(course)).stdout
    assert "0 waiting" in listed and "set to 2" in listed
    status = course_command("status", "--course", str(course)).stdout
    assert status.splitlines()[1].split()[8] == "0"                  # to review


def test_a_later_change_of_the_score_puts_it_back_for_review(course):
    course_command("review", LESSON, "--course", str(course), "--student", "sneaky", "--accept")
    assert export_all(course)[0]["sneaky"][LESSON] == "6.0"
    c = Course.open(course)
    with c.gradebook() as gb:                    # the formgrader (or a regrade) changes a cell's score
        grade = gb.find_grade("test_prob_cat", LESSON, LESSON, "sneaky")
        grade.manual_score = 0.0
        gb.db.commit()
    items = {i.outcome.student_id: i for i in review.queue(course, LESSON)}
    assert items["sneaky"].waiting and items["sneaky"].reopened
    assert export_all(course)[0]["sneaky"][LESSON] == ""
    status = course_command("status", "--course", str(course)).stdout
    assert status.splitlines()[1].split()[8] == "1" and "sneaky" in status.split("waiting for")[1]


def test_the_review_list_shows_reasons_and_evidence_waiting_first(course):
    items = review.queue(course, LESSON)
    assert [i.outcome.student_id for i in items] == ["sneaky", "partial"]
    sneaky, partial = items
    assert sneaky.waiting and sneaky.why == "flagged" and FLAG in sneaky.outcome.reasons
    assert any(e.startswith("is_cat, line 1: ") for e in sneaky.evidence), sneaky.evidence
    assert partial.why == "partly graded" and not partial.waiting
    assert any(e.startswith("test_prob_cat: 0/2") for e in partial.evidence), partial.evidence
    listed = json.loads(course_command("review", LESSON, "--course", str(course), "--json").stdout)
    assert [(i["student_id"], i["waiting"]) for i in listed] == [("sneaky", True), ("partial", False)]


@pytest.mark.parametrize("args,message", [
    (["--student", "sneaky", "--set", "7"], "between 0 and 6"),
    (["--student", "sneaky", "--set", "-1"], "between 0 and 6"),
    (["--set", "3"], "--student"),
    (["--student", "nobody", "--accept"], "no current grade"),
])
def test_a_bad_decision_is_refused_and_nothing_is_stored(course, args, message):
    done = course_command("review", LESSON, "--course", str(course), *args, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert review.history(Course.open(course), LESSON) == {}


def test_zero_and_the_history_is_kept(course):
    course_command("review", LESSON, "--course", str(course), "--student", "sneaky", "--accept")
    course_command("review", LESSON, "--course", str(course), "--student", "sneaky", "--zero", "--note", "copied")
    made = review.history(Course.open(course), LESSON)["sneaky"]
    assert [d.action for d in made] == ["accept", "zero"]
    assert export_all(course)[0]["sneaky"][LESSON] == "0.0"


# ----------------------------------------------------------------------------- stale results
def test_a_result_graded_under_other_tests_is_stale_and_counted(course):
    c = Course.open(course)
    assert all(not o.stale for o in gradebook.outcomes(c, LESSON))
    with c.gradebook() as gb:                    # what `course release` does after a test cell is edited
        cell = gb.find_source_cell("test_is_cat", LESSON, LESSON)
        cell.source += "\nassert is_cat('Abyssinian_1.jpg')"
        gb.db.commit()
    stale = {o.student_id: o.stale for o in gradebook.outcomes(c, LESSON)}
    assert set(stale) == {"honest", "sneaky", "partial"} and all("tests were released again" in w for w in stale.values())
    status = course_command("status", "--course", str(course)).stdout
    assert status.splitlines()[1].split()[9] == "3"
    assert outcome(c, LESSON, "honest").score == 6.0            # still the grade until regraded


# ----------------------------------------------------------------------------- late work
def hand_in_at(course: Path, student: str, when: str, source: str = "the time stored in the zip") -> None:
    """What `course collect` records of a placed notebook: its time, where the time came from, its hash."""
    notebook = course / "submitted" / student / LESSON / f"{LESSON}.ipynb"
    record = record_path(course, student, LESSON)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"time": when, "source": source, "file": "x.zip!x.ipynb",
                                  "sha256": notebook_hash(notebook.read_bytes())}))


DUE = '[due]\n"01_setup" = 2026-12-10T23:59:00+01:00\n'
POLICY = "[late]\ngrace_minutes = 15\nper_day_percent = 10\ncap_percent = 30\nrefuse_after_days = 7\n"


@pytest.mark.parametrize("handed_in,expected", [
    ("2026-12-10T22:00:00+00:00", "6.0"),        # 1 minute late: in the grace period
    ("2026-12-10T23:30:00+00:00", "5.4"),        # 1.5 h late: one started day, -10 % of 6
    ("2026-12-12T22:00:00+00:00", "4.8"),        # 1 d 23 h: two started days, -20 %
    ("2026-12-15T23:30:00+00:00", "4.2"),        # 5 days: capped at 30 %
    ("2026-12-18T23:30:00+00:00", "0.0"),        # more than 7 days: refused
])
def test_a_late_submission_gets_the_policy_s_deduction(course, handed_in, expected):
    (course / "course.toml").write_text(DUE + POLICY)
    hand_in_at(course, "honest", handed_in)
    rows, _ = export_all(course)
    assert rows["honest"][LESSON] == expected


def test_an_extension_cancels_it_and_the_feedback_page_explains(course):
    (course / "course.toml").write_text(DUE + POLICY)
    hand_in_at(course, "honest", "2026-12-12T23:30:00+00:00")
    course_command("feedback", LESSON, "--course", str(course))
    page = (course / "feedback" / "honest" / LESSON / f"{LESSON}.ipynb").with_suffix(".html").read_text()
    assert "late: handed in" in page and "the time stored in the zip" in page and "-30 % of the points" in page
    (course / "course.toml").write_text(DUE + POLICY + '[extensions.honest]\n"01_setup" = 2026-12-14T12:00:00Z\n')
    assert export_all(course)[0]["honest"][LESSON] == "6.0"


@pytest.mark.parametrize("config,message", [
    ('[due]\n"01_setup" = "next friday"\n', "not a date and time"),
    ('[due]\n"01_setup" = 2026-12-10T23:59:00\n', "no time zone"),
    ("[late]\nper_day_percent = 150\n", "at most 100"),
    ("[late]\nper_day = 10\n", "unknown setting"),
    ("[deadlines]\n", "unknown section"),
    ("[due\n", "not valid TOML"),
])
def test_a_config_that_does_not_parse_changes_nothing(course, config, message):
    out = course / "grades.csv"
    out.write_text("before\n")
    (course / "course.toml").write_text(config)
    done = course_command("export", "--course", str(course), "--to", str(out), check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert out.read_text() == "before\n"
    with pytest.raises(ConfigError, match=message):
        read_config(course)


def test_a_record_planted_in_the_submission_or_of_another_notebook_is_not_believed(course):
    """A student's folder (nbgrader's exchange copies whatever is in it) can hold any file: only collect's
    record outside submitted/ counts, and only for the notebook it was made for."""
    (course / "course.toml").write_text(DUE + POLICY)
    folder = course / "submitted" / "honest" / LESSON
    (folder / "timestamp.txt").write_text("2026-12-12 22:00:00.000000 UTC")          # two started days late
    (folder / "handin.json").write_text(json.dumps({"time": "2026-12-01T00:00:00+00:00", "source": "me",
                                                    "sha256": notebook_hash((folder / f"{LESSON}.ipynb").read_bytes())}))
    commit(Course.open(course), "honest")
    assert export_all(course)[0]["honest"][LESSON] == "4.8"
    hand_in_at(course, "honest", "2026-12-01T00:00:00+00:00")                        # collect's: on time
    assert export_all(course)[0]["honest"][LESSON] == "6.0"
    classroom.hand_in(course, "honest", LESSON, classroom.submission(LESSON, "partly"))   # replaced since
    (folder / "timestamp.txt").write_text("2026-12-12 22:00:00.000000 UTC")
    commit(Course.open(course), "honest", failing=("test_prob_cat",))
    assert export_all(course)[0]["honest"][LESSON] == "2.8"                         # 4 - 20 % of 6: the record is stale


def test_without_a_hand_in_record_the_timestamp_file_then_the_file_time_is_used(course):
    from grader.late import hand_in_time
    folder = course / "submitted" / "honest" / LESSON
    (folder / "timestamp.txt").write_text("2026-12-11 08:00:00.000000 UTC")
    assert hand_in_time(folder).source == "nbgrader's timestamp.txt"
    (folder / "timestamp.txt").unlink()
    assert hand_in_time(folder).source == "the notebook file's modification time"


def test_reading_the_term_leaves_the_gradebook_untouched(course):
    """status, export and the review list only read: the gradebook's file is the same byte for byte
    (a read-only gradebook can be reported on); the first decision creates the review table."""
    import hashlib
    db = course / "gradebook.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    course_command("status", "--course", str(course))
    export_all(course)
    course_command("review", LESSON, "--course", str(course), "--list")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert review.history(Course.open(course), LESSON) == {}
    course_command("review", LESSON, "--course", str(course), "--student", "sneaky", "--accept")
    assert [d.action for d in review.history(Course.open(course), LESSON)["sneaky"]] == ["accept"]
