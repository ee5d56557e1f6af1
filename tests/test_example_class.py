"""The example class end to end: collect, grade, feedback and grades give what each notebook was built to be."""
from __future__ import annotations

import csv
import html
import io
import json
import re
import sys
from pathlib import Path

import pytest

from grader.gradebook import Course, export_rows, outcomes
from grader.layout import ROOT
from grader.workflow import run_example

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
import example_class  # noqa: E402

LESSONS = ("01_setup", "05_gradcam")
# student -> lesson -> (score, status), from what tools/example_class.py built (PLANS). 01_setup is worth 6
# (prob_cat 2), 05_gradcam 8 (grad_cam_map 2, the last exercise 2).
EXPECTED = {
    "aokafor": {"01_setup": (6, "graded"), "05_gradcam": (8, "graded")},       # correct, correct
    "blindqvist": {"01_setup": (6, "graded"), "05_gradcam": (6, "graded")},    # correct, partly (last one blank)
    "cwei": {"01_setup": (4, "graded"), "05_gradcam": (8, "flagged")},         # partly (prob_cat blank), pasted course_utils
    "dvolkov": {"01_setup": (0, "graded"), "05_gradcam": (6, "graded")},       # blank, partly
    "egarcia": {"01_setup": (6, "graded"), "05_gradcam": (8, "graded")},       # renamed files, correct
    "fhaddad": {"01_setup": (6, "graded"), "05_gradcam": (8, "graded")},       # metadata stripped, correct
    "gsantos": {"01_setup": (6, "graded"), "05_gradcam": (8, "graded")},       # older partly + newer correct
    "hsato": {"01_setup": (0, "missing"), "05_gradcam": (0, "missing")},       # nothing at all
    "ipetrov": {"01_setup": (6, "flagged"), "05_gradcam": (8, "graded")},      # writes ../../../gradebook.db
    "jnovak": {"01_setup": (6, "graded"), "05_gradcam": (6, "graded")},        # aokafor's copied; grad_cam_map loops
    "kmensah": {"01_setup": (4, "flagged"), "05_gradcam": (8, "graded")},      # patches course_utils.checks
    "lfischer": {"01_setup": (4, "graded"), "05_gradcam": (8, "graded")},      # late partly, zip in a zip
}
# What leaves in the exports where it differs from the gradebook's score: ipetrov's flagged 01_setup is accepted
# in review, the other flagged ones are held back (an empty cell), lfischer's 01_setup is 2 started days late (-20 %
# of 6 points under the example's course.toml); dvolkov's late 05_gradcam is within his extension (no deduction).
EXPORTED = {("kmensah", "01_setup"): "", ("cwei", "05_gradcam"): "", ("lfischer", "01_setup"): 2.8}
# Reasons that must be on a page: (student, lesson, words in the summary)
REASONS = [("cwei", "01_setup", "no answer yet"), ("jnovak", "05_gradcam", "cell 'grad_cam_map' ran for more than 20 s"),
           ("hsato", "05_gradcam", "no notebook was handed in"), ("kmensah", "01_setup", "flagged for review"),
           ("kmensah", "01_setup", "a hidden test failed: AssertionError"),
           ("ipetrov", "01_setup", "gradebook.db"), ("fhaddad", "01_setup", "nbgrader metadata was missing"),
           ("lfischer", "01_setup", "-20 % of the points"), ("ipetrov", "01_setup", "accepted 6")]


def exported(sid: str, lesson: str):
    """The score a student's lesson leaves with: EXPORTED's where it differs, else the gradebook's."""
    return EXPORTED.get((sid, lesson), EXPECTED[sid][lesson][0])


def test_the_generator_reproduces_the_committed_class_byte_for_byte():
    for name, data in example_class.build().items():
        assert (ROOT / "examples" / "class" / name).read_bytes() == data, \
            f"examples/class/{name} is out of date: run `PYTHONPATH=. python tools/example_class.py`"


@pytest.fixture(scope="module")
def run(tmp_path_factory, learn):
    """The example class through the whole workflow once (the `learn` fixture makes sure the model is cached)."""
    lines: list[str] = []
    done = run_example(tmp_path_factory.mktemp("example") / "course", workers=2, progress=False, log=lines.append)
    return done, lines


def test_every_student_gets_the_score_and_status_the_notebook_was_built_for(run):
    done, _ = run
    course = Course.open(done.course)
    found = {}
    for lesson in LESSONS:                   # the computed grade (exports apply reviews and late work: below)
        for o in outcomes(course, lesson):
            found.setdefault(o.student_id, {})[lesson] = (o.score, o.status)
    assert found == EXPECTED


def test_the_sandbox_stopped_the_write_outside_the_work_folder(run):
    """ipetrov's cell tries ../../../gradebook.db: under `course grade` its private root is read-only there
    (OSError: read-only file system), and the real gradebook is untouched."""
    done, _ = run
    graded = (done.course / "autograded" / "ipetrov" / "01_setup" / "01_setup.ipynb").read_text()
    assert "not allowed: OSError" in graded or "not allowed: PermissionError" in graded
    assert (done.course / "gradebook.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_collect_placed_everyone_but_the_absent_and_reported_the_rest(run):
    done, _ = run
    first, second = done.collected
    assert first.missing == second.missing == ["hsato"]
    assert len(first.placed) == len(second.placed) == 11
    why = {u.origin.rsplit("!", 1)[-1]: u.reason for u in first.unplaced + second.unplaced}
    assert why["okaforadaeze_1101_5000_01_setup_notes.pdf"] == "not a notebook (.ipynb)"
    assert "older file of gsantos" in why["santosgabriel_1107_4006_01_setup.ipynb"]
    assert "not in the roster" in why["smithjordan_1999_5999_01_setup.ipynb"]
    assert "not a notebook" in why["Lena Fischer_1112_assignsubmission_onlinetext_/onlinetext.html"]
    assert len(why) == 4


def test_the_csv_has_a_row_for_every_roster_student(run):
    done, _ = run
    with open(done.grades_csv, newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert list(rows) == [s[0] for s in example_class.STUDENTS]
    for sid, lessons in EXPECTED.items():
        want = [exported(sid, lesson) for lesson in LESSONS]
        assert [rows[sid][lesson] for lesson in LESSONS] == ["" if w == "" else str(float(w)) for w in want]
        assert rows[sid]["total"] == "" if "" in want else float(rows[sid]["total"]) == round(sum(want), 4)
    assert rows["hsato"]["email"] == "hsato@students.example.edu"


def page_text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def test_every_lost_point_has_its_reason_on_the_page(run):
    done, _ = run
    assert len(done.pages) == len(EXPECTED) * len(LESSONS)
    for page in done.pages:
        shown = exported(page.student_id, page.lesson)
        assert page.score == (EXPECTED[page.student_id][page.lesson][0] if shown == "" else shown)
        summary = html.unescape(re.sub(r"<[^>]+>", " ", page.path.read_text().split("</section>")[0]))
        for lost in page.lost:
            assert lost.reason, f"{page.student_id} {page.lesson} {lost.grade_id}: no reason"
            assert lost.reason in summary
    pages = {(p.student_id, p.lesson): p for p in done.pages}
    for sid, lesson, words in REASONS:
        assert words in page_text(pages[sid, lesson].path), (sid, lesson, words)


def hidden_lines(lesson: str) -> set[str]:
    """Lines of the lesson's hidden tests that a student cannot see (not in the release, not an answer)."""
    visible = "\n".join(c.source for c in classroom.nbformat.read(classroom.notebook_path(ROOT / "notebooks", lesson),
                                                                  as_version=4).cells)
    visible += "\n".join(classroom.answers(lesson).values())
    source = classroom.nbformat.read(classroom.notebook_path(ROOT / "solutions", lesson), as_version=4)
    lines = set()
    for cell in source.cells:
        for block in re.findall(r"BEGIN HIDDEN TESTS(.*?)END HIDDEN TESTS", cell.source, re.S):
            lines |= {line.strip() for line in block.splitlines()
                      if len(line.strip()) > 8 and not line.strip().startswith("#") and line.strip() not in visible}
    return lines


def test_no_hidden_test_source_appears_in_any_page(run):
    done, _ = run
    hidden = {lesson: hidden_lines(lesson) for lesson in LESSONS}
    assert all(len(lines) > 10 for lines in hidden.values())
    for page in done.pages:
        text = page_text(page.path)
        leaked = [line for line in hidden[page.lesson] if line in text]
        assert not leaked, f"{page.path} shows hidden test code: {leaked[:3]}"
    graded = (done.course / "autograded" / "jnovak" / "05_gradcam" / "05_gradcam.ipynb").read_text()
    assert any(line in graded for line in hidden["05_gradcam"])     # the check above could fail


def test_two_feedback_pages_in_chromium_show_the_reason(run, chromium):
    from playwright.sync_api import sync_playwright
    done, _ = run
    pages = {(p.student_id, p.lesson): p for p in done.pages}
    out = ROOT / "outputs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            for sid, lesson in (("jnovak", "05_gradcam"), ("kmensah", "01_setup")):
                page = pages[sid, lesson]
                tab.goto(page.path.as_uri(), wait_until="domcontentloaded")
                reason = tab.locator("#course-summary tr.lost td.reason").first
                assert reason.is_visible()
                assert reason.inner_text() == page.lost[0].reason
                tab.screenshot(path=str(out / f"feedback-{sid}-{lesson}.png"))
        finally:
            browser.close()
    assert (out / "feedback-jnovak-05_gradcam.png").stat().st_size > 10_000


def test_running_it_again_changes_no_grade(run):
    done, _ = run
    before = json.loads((done.course / "autograded" / "cwei" / "01_setup" / "course-grade.json").read_text())
    again = run_example(done.course, workers=2, progress=False, log=lambda m: None)
    assert again.graded.results == [] and len(again.graded.skipped) == 22
    assert all(not c.placed and len(c.unchanged) == 11 for c in again.collected)
    after = json.loads((done.course / "autograded" / "cwei" / "01_setup" / "course-grade.json").read_text())
    assert after == before


def test_status_counts_each_lesson(run):
    from grader.overview import status
    done, _ = run
    rows = {r.lesson: r for r in status(done.course)}
    assert [(r.released, r.collected, r.graded, r.flagged, r.failed, r.missing, r.not_graded, r.exported)
            for r in (rows["01_setup"], rows["05_gradcam"])] == [(True, 11, 9, 2, 0, 1, 0, "yes"),
                                                                  (True, 11, 10, 1, 0, 1, 0, "yes")]
    assert rows["01_setup"].to_review == ("kmensah",) and rows["05_gradcam"].to_review == ("cwei",)


def test_the_copied_pair_ranks_first_among_student_pairs(run):
    """jnovak's 01_setup is aokafor's, renamed and re-commented: it tops the student pairs, well above honest ones."""
    done, lines = run
    setup = next(r for r in done.similar if r.lesson == "01_setup")
    first, second = setup.flagged("students")[0], [p for p in setup.pairs if p.kind == "students"][1]
    assert {first.left, first.right} == {"aokafor", "jnovak"} and first.score > 0.95
    assert second.score < first.score - 0.2
    assert setup.html_path.is_file() and any(str(setup.html_path) in line for line in lines)


def test_the_pasted_reference_ranks_first_against_known_sources_and_is_flagged(run):
    """cwei pasted course_utils' HookBwd and used its Grad-CAM helpers: first against the known sources, and the
    reference scan flagged the submission for review."""
    done, _ = run
    gradcam = next(r for r in done.similar if r.lesson == "05_gradcam")
    top = [p for p in gradcam.pairs if p.kind == "known"][0]
    assert (top.left, top.right) == ("cwei", "course_utils/hooks.py") and top in gradcam.flagged("known")
    assert not [p for p in gradcam.flagged("known") if p.left != "cwei"]
    reasons = {r["student_id"]: r["reasons"] for r in export_rows(Course.open(done.course), "05_gradcam")}
    assert "course_utils.cam.gradcam_weights" in reasons["cwei"]


def test_the_late_policy_takes_its_deduction_and_the_extension_cancels_it(run):
    from grader.late import hand_in_time, read_config
    done, _ = run
    config = read_config(done.course)
    assert (done.course / "course.toml").read_bytes() == (ROOT / "examples" / "class" / "course.toml").read_bytes()
    folder = done.course / "submitted" / "dvolkov" / "05_gradcam"
    assert hand_in_time(folder).time > config.due["05_gradcam"]          # late but for the extension
    late = {(lesson, sid): note for lesson, sid, note in done.late}
    assert list(late) == [("01_setup", "lfischer")] and "-20 %" in late["01_setup", "lfischer"]
    with open(done.grades_csv, newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert rows["lfischer"]["01_setup"] == "2.8" and rows["dvolkov"]["05_gradcam"] == "6.0"


def test_the_reviewed_submission_leaves_and_the_unreviewed_ones_are_held_back(run):
    done, _ = run
    before, after = ([i.outcome.student_id for i in items if i.waiting] for items in done.to_review)
    assert before == ["ipetrov", "kmensah"] and after == ["kmensah"]
    assert done.decision.student == "ipetrov" and done.decision.score == 6
    held = {(lesson, sid) for lesson, sid, _ in done.held_back}
    assert held == {("01_setup", "kmensah"), ("05_gradcam", "cwei")}


def test_the_canvas_upload_fills_the_lesson_columns_and_keeps_every_other_cell(run):
    done, _ = run
    canvas, moodle = done.lms
    before = list(csv.reader(io.StringIO((ROOT / "examples" / "class" / "canvas_gradebook.csv").read_text())))
    after = list(csv.reader(io.StringIO(canvas.path.read_text())))
    assert canvas.path == done.course / "canvas_upload.csv" and len(after) == len(before)
    columns = {before[0].index(f"{lesson} ({example_class.CANVAS_IDS[lesson]})"): lesson for lesson in LESSONS}
    logins = {sid for sid, *_ in example_class.STUDENTS}
    for old, new in zip(before, after):
        for i, (was, now) in enumerate(zip(old, new, strict=True)):
            if i in columns and old[3] in logins and exported(old[3], columns[i]) != "":
                assert float(now) == exported(old[3], columns[i]), (old[3], columns[i])
            else:
                assert now == was, (old[0], before[0][i])
    assert len(canvas.not_in_roster) == 2 and "Smith, Jordan" in canvas.not_in_roster[0]      # and the test student
    with open(moodle.path, newline="") as f:
        grades = {r["Email address"]: r for r in csv.DictReader(f)}
    assert grades["lfischer@students.example.edu"]["01_setup"] == "2.8"
    assert "kmensah@students.example.edu" not in grades           # held back: an empty cell would erase Moodle's grade
    assert any(w.startswith("kmensah") and "no grade to send for 01_setup" in w for w in moodle.not_in_lms)
