"""Grade files an LMS takes as they are (grader/lms.py): Canvas upload, Moodle grade import, Moodle feedback zip.

The fixtures in tests/data/lms/ follow the documented layouts (tests/data/lms/SOURCES.md). Most tests
call the library on hand-set rows; the last ones run `course export` on a scratch course (nothing graded).
"""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grader.layout import ROOT
from grader.lms import (LmsReport, canvas_upload, moodle_feedback_zip, moodle_folder, moodle_grades, plain_number,
                        read_moodle_worksheet)

DATA = ROOT / "tests" / "data" / "lms"
CANVAS = DATA / "canvas_gradebook.csv"
WORKSHEET = DATA / "moodle_worksheet.csv"
COLUMNS = ["student_id", "first_name", "last_name", "email", "01_setup", "05_gradcam", "total"]


def person(sid, first, last, email, setup, gradcam):
    total = "" if "" in (setup, gradcam) else setup + gradcam
    return {"student_id": sid, "first_name": first, "last_name": last, "email": email,
            "01_setup": setup, "05_gradcam": gradcam, "total": total}


ROWS = [
    person("aokafor", "Adaeze", "Okafor", "aokafor@students.example.edu", 6.0, 8.0),
    person("blindqvist", "Björn", "Lindqvist", "blindqvist@students.example.edu", 4.5, 0.0),
    person("cwei", "Chen", "Wei", "cwei@students.example.edu", 6.0, ""),          # 05_gradcam: no grade yet
    person("dvolkov", "Dmitri", "Volkov", "dvolkov@students.example.edu", 3.0, 7.0),   # excused in Canvas
    person("egarcia", "Elena", "Garcia", "", 1.25, 2.0),                          # not in Canvas, no email
]


def lines_of(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8").splitlines(keepends=True)


# ------------------------------------------------------------------ Canvas

def test_canvas_upload_rewrites_only_the_lesson_cells_of_matched_students(tmp_path):
    """Is every other byte of Canvas's export kept, and are our scores in the lesson columns?"""
    out = tmp_path / "upload.csv"
    canvas_upload(COLUMNS, ROWS, CANVAS, out)
    before, after = lines_of(CANVAS), lines_of(out)
    changed = {  # (line index) -> the line as it must read now: only 01_setup (col 7) and 05_gradcam (col 9)
        3: '"Okafor, Adaeze",5001,S1001,aokafor,Section 01,,6,9.00,8,14.00,14.00,87.50,87.50,58.33,58.33\n',
        4: '"Lindqvist, Björn",5002,S1002,blindqvist@students.example.edu,Section 01,"says ""hi"", handed in late",'
           '4.5,7.50,0,7.50,7.50,75.00,75.00,31.25,31.25\n',
        6: '"Volkov, Dmitri",5004,S1004,dvolkov,Section 02,,3,8.00,EX,8.00,8.00,80.00,80.00,50.00,50.00\n',
    }
    assert len(after) == len(before)
    for i, line in enumerate(before):
        assert after[i] == changed.get(i, line), f"line {i + 1}"
    assert out.read_bytes()[-1:] == b"\n" and b"\r" not in out.read_bytes()


def test_canvas_upload_reports_who_is_missing_on_each_side(tmp_path):
    """Are Canvas rows without a student of ours, and our students without a Canvas row, listed?"""
    report = canvas_upload(COLUMNS, ROWS, CANVAS, tmp_path / "upload.csv")
    assert isinstance(report, LmsReport)
    assert report.written == ("aokafor", "blindqvist", "cwei", "dvolkov")       # cwei by SIS User ID
    assert report.lessons == ("01_setup", "05_gradcam")
    assert [re.sub(r"^line \d+: ", "", r).split(" (")[0] for r in report.not_in_roster] == \
        ["Smith, Jordan", "Student, Test"]
    assert report.not_in_lms == ("egarcia (Elena Garcia)",)
    assert any("cwei 05_gradcam: no grade yet" in n for n in report.notes)
    assert any("dvolkov 05_gradcam: excused" in n for n in report.notes)
    printed = "\n".join(report.lines())
    assert "Smith, Jordan" in printed and "egarcia" in printed


def test_canvas_upload_keeps_semicolons_crlf_and_bom(tmp_path):
    """Does a export saved with ';', CRLF line endings and a BOM come back in the same form?"""
    table = list(csv.reader(io.StringIO(CANVAS.read_text(encoding="utf-8"))))
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";", lineterminator="\r\n").writerows(table)
    source = tmp_path / "semicolons.csv"
    source.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))
    out = tmp_path / "upload.csv"
    canvas_upload(COLUMNS, ROWS, source, out)
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\r\n") == data.count(b"\n") == len(table)
    got = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert [r[6] for r in got[3:7]] == ["6", "4.5", "6.00", "3"]
    assert [r[8] for r in got[3:7]] == ["8", "0", "", "EX"]
    assert all(g[:6] + g[9:] == t[:6] + t[9:] and g[7] == t[7] for g, t in zip(got, table))


def test_canvas_upload_keeps_quoting_a_csv_writer_would_change(tmp_path):
    """Are needless quotes, a line break inside a quoted cell and a quoted old score outside our lessons kept?"""
    text = CANVAS.read_text(encoding="utf-8").replace(
        '"Okafor, Adaeze",5001,S1001,aokafor,Section 01,,5.00,9.00,',
        '"Okafor, Adaeze","5001",S1001,"aokafor",Section 01,"two\nlines",5.00,"9.00",')
    source = tmp_path / "quoted.csv"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "upload.csv"
    canvas_upload(COLUMNS, ROWS, source, out)
    assert out.read_text(encoding="utf-8") == text.replace(
        '"two\nlines",5.00,"9.00",,', '"two\nlines",6,"9.00",8,').replace(
        "Section 01,,,7.50,,", "Section 01,,4.5,7.50,0,").replace(
        'handed in late",,7.50,,', 'handed in late",4.5,7.50,0,').replace(
        "Section 02,,,8.00,EX", "Section 02,,3,8.00,EX")


def test_canvas_upload_reads_lastname_firstname_headers(tmp_path):
    """Is Canvas's LastName/FirstName variant of the header understood?"""
    text = CANVAS.read_text(encoding="utf-8").replace("Student,ID,", "LastName,FirstName,ID,", 1)
    text = re.sub(r'^"(\w+), (\w+)",', r"\1,\2,", text, flags=re.M).replace("    Points Possible,", "    Points Possible,,")
    text = text.replace("\n,,,,,,,Manual", "\n,,,,,,,,Manual")
    source = tmp_path / "names.csv"
    source.write_text(text, encoding="utf-8")
    report = canvas_upload(COLUMNS, ROWS, source, tmp_path / "upload.csv")
    assert report.written == ("aokafor", "blindqvist", "cwei", "dvolkov")
    assert "Okafor,Adaeze,5001,S1001,aokafor,Section 01,,6,9.00,8," in (tmp_path / "upload.csv").read_text()


@pytest.mark.parametrize("mangle,message", [
    (lambda t: t.replace("01_setup (123451)", "Lesson 1 (123451)").replace("05_gradcam (123455)", "Lesson 5 (123455)"),
     "no assignment column for any lesson: expected columns named like '01_setup (123456)'"),
    (lambda t: t.replace("Student,ID,", "Name,Number,", 1), "is not a Canvas gradebook export"),
    (lambda t: t.replace("SIS User ID,SIS Login ID", "Email,Login"), "no SIS Login ID or SIS User ID column"),
    (lambda t: t.replace("Quiz 1 (123460)", "01 Setup (123460)"), "2 assignment columns for lesson 01_setup"),
])
def test_a_gradebook_that_does_not_fit_changes_nothing(tmp_path, mangle, message):
    """Is a file that is not a Canvas export, or lacks the lessons' columns, refused with what was expected and found?"""
    source = tmp_path / "gradebook.csv"
    source.write_text(mangle(CANVAS.read_text(encoding="utf-8")), encoding="utf-8")
    before = source.read_bytes()
    with pytest.raises(ValueError, match=re.escape(message)):
        canvas_upload(COLUMNS, ROWS, source, tmp_path / "upload.csv")
    assert not (tmp_path / "upload.csv").exists() and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradebook.csv"]          # no temp file left either


def test_unknown_columns_error_names_what_was_found(tmp_path):
    """Does the error list the assignment columns the file does have?"""
    source = tmp_path / "gradebook.csv"
    source.write_text(CANVAS.read_text(encoding="utf-8").replace("01_setup (", "Week 1 (").replace("05_gradcam (", "Week 5 ("))
    with pytest.raises(ValueError) as error:
        canvas_upload(COLUMNS, ROWS, source, tmp_path / "upload.csv")
    assert "'Week 1 (123451)', 'Quiz 1 (123460)', 'Week 5 (123455)'" in str(error.value)


def test_canvas_upload_refuses_to_overwrite_its_source(tmp_path):
    """Is writing the upload over the download itself refused?"""
    source = tmp_path / "gradebook.csv"
    source.write_bytes(CANVAS.read_bytes())
    with pytest.raises(ValueError, match="is the Canvas download itself"):
        canvas_upload(COLUMNS, ROWS, source, source)
    assert source.read_bytes() == CANVAS.read_bytes()


def test_a_lesson_canvas_does_not_have_is_reported_and_the_rest_written(tmp_path):
    """With only 01_setup in Canvas, is 05_gradcam named as not written while 01_setup is filled?"""
    source = tmp_path / "gradebook.csv"
    source.write_text(CANVAS.read_text(encoding="utf-8").replace("05_gradcam (123455)", "Project (123455)"))
    report = canvas_upload(COLUMNS, ROWS, source, tmp_path / "upload.csv")
    assert report.lessons == ("01_setup",)
    assert any(n.startswith("lesson 05_gradcam: no column") for n in report.notes)
    got = list(csv.reader(open(tmp_path / "upload.csv", encoding="utf-8")))
    assert got[3][6] == "6" and got[3][8] == ""


# ------------------------------------------------------------------ Moodle grade import

def test_moodle_grades_is_a_plain_utf8_csv_with_an_identifier_and_a_column_per_lesson(tmp_path):
    """Is the file what Moodle's CSV import maps: header, email column, plain numbers, and no empty
    cell (Moodle would erase the grade it holds)?"""
    out = tmp_path / "moodle.csv"
    report = moodle_grades(COLUMNS, ROWS, out)
    data = out.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data
    assert data.decode("utf-8").splitlines() == [
        "Email address,01_setup,05_gradcam",
        "aokafor@students.example.edu,6,8",
        "blindqvist@students.example.edu,4.5,0",
        "dvolkov@students.example.edu,3,7",
    ]
    assert report.written == ("aokafor", "blindqvist", "dvolkov")
    assert report.not_in_lms == (
        "cwei (Chen Wei): no grade to send for 05_gradcam (an empty cell would erase the grade Moodle holds), "
        "left out; send their other grades with `course export 01_setup --moodle`",
        "egarcia (Elena Garcia): no email in the roster, left out")
    assert any("Map to 'useremail'" in n for n in report.notes)


def test_moodle_grades_by_idnumber_uses_our_ids_and_refuses_unknown_fields(tmp_path):
    """Does --moodle-id idnumber write our student ids, and an unknown field change nothing?"""
    out = tmp_path / "moodle.csv"
    moodle_grades(COLUMNS, ROWS, out, id_field="idnumber")
    rows = list(csv.reader(open(out, encoding="utf-8")))
    assert rows[0] == ["ID number", "01_setup", "05_gradcam"]
    assert [r[0] for r in rows[1:]] == ["aokafor", "blindqvist", "dvolkov", "egarcia"]
    assert rows[-1] == ["egarcia", "1.25", "2"]
    with pytest.raises(ValueError, match="--moodle-id must be one of email, idnumber, username"):
        moodle_grades(COLUMNS, ROWS, tmp_path / "other.csv", id_field="fullname")
    assert not (tmp_path / "other.csv").exists()


def test_two_students_with_one_email_are_not_both_written(tmp_path):
    """Is a second student with the same email left out and named (Moodle would give one user both rows)?"""
    twin = person("aokafor2", "Ada", "Okafor", "AOKAFOR@students.example.edu", 1.0, 1.0)
    report = moodle_grades(COLUMNS, [ROWS[0], twin], tmp_path / "moodle.csv")
    assert report.written == ("aokafor",) and "same email as aokafor" in report.not_in_lms[0]


def test_a_lesson_nobody_has_a_grade_for_is_no_column_and_one_lesson_leaves_out_only_its_gaps(tmp_path):
    """Does the one-lesson file send everyone graded in it, and a lesson no one has a grade for stay out?"""
    one = ["student_id", "first_name", "last_name", "email", "05_gradcam", "total"]
    rows = [{k: r[k] for k in one} for r in ROWS[:4]]
    report = moodle_grades(one, rows, tmp_path / "gradcam.csv")
    assert report.written == ("aokafor", "blindqvist", "dvolkov") and report.lessons == ("05_gradcam",)
    assert report.not_in_lms[0].endswith("(an empty cell would erase the grade Moodle holds), left out")
    nobody = [{**r, "05_gradcam": ""} for r in ROWS[:2]]
    report = moodle_grades(COLUMNS, nobody, tmp_path / "setup.csv")
    assert (tmp_path / "setup.csv").read_text().splitlines() == [
        "Email address,01_setup", "aokafor@students.example.edu,6", "blindqvist@students.example.edu,4.5"]
    assert "no grade yet for anyone, so not in the file: 05_gradcam" in report.notes


@pytest.mark.parametrize("score,text", [(6.0, "6"), (4.5, "4.5"), (0.0, "0"), (-0.0, "0"), (7.12345, "7.1235"),
                                        (1e-7, "0"), (100, "100")])
def test_plain_number(score, text):
    """Are scores written as plain decimals an LMS reads (no exponent, no trailing zeros)?"""
    assert plain_number(score) == text


# ------------------------------------------------------------------ Moodle feedback zip

@pytest.fixture
def feedback_dir(tmp_path):
    """Feedback pages as `course feedback 05_gradcam` writes them, for three students (not dvolkov)."""
    root = tmp_path / "feedback"
    for sid in ("aokafor", "blindqvist", "cwei"):
        page = root / sid / "05_gradcam" / "05_gradcam.html"
        page.parent.mkdir(parents=True)
        page.write_text(f"<html><body>{sid}'s feedback</body></html>", encoding="utf-8")
    return root


def moodle_reads(entry: str) -> tuple[str, str] | None:
    """(participant id, file name) as Moodle's importziplib reads an entry: parts split on '_' into ≤ 5."""
    parts = entry.split("/")
    while parts:
        info = parts.pop(0).split("_", 4)
        if len(info) >= 4 and info[1].isdigit() and info[2:4] == ["assignfeedback", "file"]:
            return info[1], "/".join([info[4] if len(info) == 5 else "", *parts]).lstrip("/")
    return None


def test_feedback_zip_has_one_folder_per_participant_in_moodles_layout(tmp_path, feedback_dir):
    """Does each matched participant get '<full name>_<participant id>_assignfeedback_file_/<page>', the page intact?"""
    out = tmp_path / "feedback.zip"
    report = moodle_feedback_zip(ROWS, "05_gradcam", feedback_dir, WORKSHEET, out)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert names == ["Adaeze Okafor_4810213_assignfeedback_file_/05_gradcam.html",
                         "Björn Lindqvist_4810214_assignfeedback_file_/05_gradcam.html",
                         "Chen Wei_4810215_assignfeedback_file_/05_gradcam.html"]
        assert archive.read(names[2]) == (feedback_dir / "cwei" / "05_gradcam" / "05_gradcam.html").read_bytes()
    assert [moodle_reads(n) for n in names] == [("4810213", "05_gradcam.html"), ("4810214", "05_gradcam.html"),
                                                ("4810215", "05_gradcam.html")]
    assert report.written == ("aokafor", "blindqvist", "cwei")
    assert len(report.not_in_roster) == 1 and "Jordan Smith" in report.not_in_roster[0]
    assert report.not_in_lms == ("dvolkov (Dmitri Volkov)", "egarcia (Elena Garcia)")
    assert any("matched to cwei by full name" in n for n in report.notes)


def test_a_matched_student_without_a_page_is_reported(tmp_path, feedback_dir):
    """Is a worksheet participant we know but who has no page named, with the command that writes it?"""
    (feedback_dir / "blindqvist" / "05_gradcam" / "05_gradcam.html").unlink()
    report = moodle_feedback_zip(ROWS, "05_gradcam", feedback_dir, WORKSHEET, tmp_path / "feedback.zip")
    assert report.written == ("aokafor", "cwei")
    assert any("blindqvist: no feedback page" in n and "course feedback 05_gradcam" in n for n in report.notes)


@pytest.mark.parametrize("name,folder", [("Jane Doe", "Jane Doe_12_assignfeedback_file_"),
                                         ("Jane_Doe", "Jane Doe_12_assignfeedback_file_"),
                                         ("a/b\\c", "a b c_12_assignfeedback_file_"), ("", "Participant_12_assignfeedback_file_")])
def test_moodle_folder_keeps_the_participant_id_second(name, folder):
    """Can no name push the participant id out of the second '_' piece Moodle reads?"""
    assert moodle_folder(name, "12") == folder and moodle_reads(folder + "/x.html") == ("12", "x.html")


def test_a_file_that_is_not_a_worksheet_changes_nothing(tmp_path, feedback_dir):
    """Is a Canvas CSV passed as the worksheet refused, naming the columns expected and found?"""
    with pytest.raises(ValueError, match=r"not a Moodle grading worksheet: expected columns 'Identifier'.*found \['Student'"):
        moodle_feedback_zip(ROWS, "05_gradcam", feedback_dir, CANVAS, tmp_path / "feedback.zip")
    bad = tmp_path / "bad.csv"
    bad.write_text(WORKSHEET.read_text(encoding="utf-8").replace("Participant 4810214", "Someone"), encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: Identifier 'Someone' is not 'Participant <number>'"):
        moodle_feedback_zip(ROWS, "05_gradcam", feedback_dir, bad, tmp_path / "feedback.zip")
    assert not (tmp_path / "feedback.zip").exists()


def test_worksheet_reader_takes_a_bom_and_localised_identifiers(tmp_path):
    """Does 'Participante 7' (another language) with a BOM still give participant 7?"""
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(b"\xef\xbb\xbfIdentifier,Full name,Email address\nParticipante 7,Ana Ruiz,ana@x.org\n")
    (p,) = read_moodle_worksheet(sheet)
    assert (p.participant_id, p.full_name, p.email) == ("7", "Ana Ruiz", "ana@x.org")


# ------------------------------------------------------------------ `course export` on a scratch course

def course_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def scratch_course(tmp_path_factory):
    """A released 01_setup with the roster's first four students: cwei handed in (not graded: an empty
    cell), the others nothing (0). Nothing is graded."""
    import classroom
    from grader.gradebook import Course
    from grader.roster import Roster, Student, import_roster
    course = classroom.new_course(tmp_path_factory.mktemp("lms-course"), ["01_setup"])
    import_roster(Course.open(course), Roster((
        Student("aokafor", "Adaeze", "Okafor", "aokafor@students.example.edu"),
        Student("blindqvist", "Björn", "Lindqvist", "blindqvist@students.example.edu"),
        Student("cwei", "Chen", "Wei", "cwei@students.example.edu"),
        Student("egarcia", "Elena", "Garcia", "egarcia@students.example.edu"))))
    classroom.hand_in(course, "cwei", "01_setup", classroom.submission("01_setup", "blank"))
    return course


def test_course_export_canvas_and_moodle_from_a_course(scratch_course, tmp_path):
    """Does `course export --canvas/--moodle` write the course's grade rows and print who is unmatched?"""
    upload = tmp_path / "upload.csv"
    done = course_cli("export", "--canvas", str(CANVAS), "--to", str(upload), "--course", str(scratch_course))
    assert done.returncode == 0, done.stderr
    assert "not in our roster: line 7: Volkov, Dmitri" in done.stdout
    assert "not in the LMS file: egarcia (Elena Garcia)" in done.stdout
    got = list(csv.reader(open(upload, encoding="utf-8")))
    assert [r[6] for r in got[3:6]] == ["0", "0", "6.00"]            # cwei: not graded, Canvas cell kept
    moodle = tmp_path / "moodle.csv"
    done = course_cli("export", "--moodle", "--to", str(moodle), "--course", str(scratch_course))
    assert done.returncode == 0, done.stderr
    assert moodle.read_text(encoding="utf-8").splitlines() == [
        "Email address,01_setup", "aokafor@students.example.edu,0", "blindqvist@students.example.edu,0",
        "egarcia@students.example.edu,0"]
    assert "not in the LMS file: cwei (Chen Wei): no grade to send for 01_setup" in done.stdout


def test_course_export_moodle_feedback_zips_the_course_pages(scratch_course, tmp_path):
    """Does `course export LESSON --moodle-feedback` zip feedback/<student>/<lesson>/ pages?"""
    page = scratch_course / "feedback" / "aokafor" / "01_setup" / "01_setup.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html>aokafor</html>")
    out = tmp_path / "feedback.zip"
    done = course_cli("export", "01_setup", "--moodle-feedback", str(WORKSHEET), "--to", str(out),
                      "--course", str(scratch_course))
    assert done.returncode == 0, done.stderr
    assert zipfile.ZipFile(out).namelist() == ["Adaeze Okafor_4810213_assignfeedback_file_/01_setup.html"]
    assert "blindqvist: no feedback page" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--moodle", "--canvas", str(CANVAS)], "not allowed with argument"),
    (["--moodle-id", "idnumber"], "--moodle-id goes with --moodle"),
    (["--moodle-feedback", str(WORKSHEET)], "zips one lesson's pages: name it"),
    (["--canvas", str(WORKSHEET)], "is not a Canvas gradebook export"),
    (["--canvas", "nowhere.csv"], "nowhere.csv does not exist"),
    (["--moodle", "--include-unreviewed"], "--include-unreviewed is for our own CSV"),
])
def test_course_export_lms_errors_write_nothing(scratch_course, tmp_path, args, message):
    """Is a wrong combination refused with exit 2, the fix in the message, and no file written?"""
    done = course_cli("export", *args, "--to", str(tmp_path / "out.csv"), "--course", str(scratch_course))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert not (tmp_path / "out.csv").exists()
