"""`course collect`: every layout an LMS or a student produces is placed, the rest is reported."""
from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from grader.collect import MAX_FILE_BYTES, collect
from grader.layout import ROOT
from grader.roster import Roster, Student, read_roster

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "01_setup"
ROSTER = Roster((Student("jdoe", "Jane", "Doe", "jane.doe@uni.example"),
                 Student("s102", "Ali", "Khan", "akhan@uni.example"),
                 Student("mlopez", "Maria", "Lopez", "")))


def notebook(tag: str) -> bytes:
    """A small distinct notebook (collect copies bytes; it never runs them)."""
    return json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": tag}], "metadata": {},
                       "nbformat": 4, "nbformat_minor": 5}).encode()


def make_zip(entries: dict[str, bytes], when=(2026, 11, 30, 12, 0, 0)) -> bytes:
    """A zip in memory; a value may be (bytes, date_time) to set that entry's time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in entries.items():
            data, stamp = value if isinstance(value, tuple) else (value, when)
            zf.writestr(zipfile.ZipInfo(name, stamp), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


@pytest.fixture
def course(tmp_path):
    """A scratch course (sources only: collect needs no gradebook) inside tmp_path/course."""
    return classroom.new_course(tmp_path / "course", [LESSON, "05_gradcam"], generate=False)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def placed(course: Path, sid: str) -> bytes:
    return (course / "submitted" / sid / LESSON / f"{LESSON}.ipynb").read_bytes()


def folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    """A source folder holding these files (relative paths)."""
    for rel, data in files.items():
        (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / rel).write_bytes(data)
    return tmp_path / name


def reasons(report) -> dict[str, str]:
    return {u.origin.split("!")[-1].split("/")[-1]: u.reason for u in report.unplaced}


def test_flat_folder_one_file_per_student_without_roster(course, tmp_path):
    """Is each file's name (minus the lesson and Colab's additions) taken as the student id?"""
    src = folder(tmp_path, "flat", {"alice.ipynb": notebook("a"), "bob_01_setup.ipynb": notebook("b"),
                                    "Copy of carol (1).ipynb": notebook("c")})
    report = collect(LESSON, [src], course)
    assert sorted(p.student_id for p in report.placed) == ["alice", "bob", "carol"]
    assert placed(course, "carol") == notebook("c")
    stamp = (course / "submitted" / "alice" / LESSON / "timestamp.txt").read_text()
    assert stamp.endswith(" UTC") and stamp[:4].isdigit()
    assert report.unplaced == [] and report.missing == []


def test_per_student_folders_with_a_roster(course, tmp_path):
    """Are folders named by id, email or full name matched to roster ids, renamed notebooks included?"""
    src = folder(tmp_path, "folders", {"jdoe/01_setup.ipynb": notebook("jdoe"), "akhan/01_setup-2.ipynb": notebook("akhan"),
                                       "Maria Lopez/Copy of 01_setup (3).ipynb": notebook("Maria Lopez")})
    report = collect(LESSON, [src], course, roster=ROSTER)
    assert {p.student_id: Path(p.origin).parent.name for p in report.placed} == {
        "jdoe": "jdoe", "s102": "akhan", "mlopez": "Maria Lopez"}
    assert placed(course, "mlopez") == notebook("Maria Lopez")


def test_canvas_bulk_zip_late_and_resubmitted(course, tmp_path):
    """Canvas names (login lastnamefirstname, _LATE, -N copies): the highest copy wins, the rest is reported."""
    bulk = tmp_path / "submissions.zip"
    bulk.write_bytes(make_zip({
        "doejane_12345_67890_01_setup.ipynb": notebook("jane first"),
        "doejane_12345_67891_01_setup-1.ipynb": notebook("jane second"),
        "khanali_LATE_12346_67892_01_setup.ipynb": notebook("ali late"),
        "smithbob_12347_67893_01_setup.ipynb": notebook("bob"),
    }))
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert sorted(p.student_id for p in report.placed) == ["jdoe", "s102"]
    assert placed(course, "jdoe") == notebook("jane second")
    why = reasons(report)
    assert "is newer" in why["doejane_12345_67890_01_setup.ipynb"]
    assert "'smithbob' is not in the roster" in why["smithbob_12347_67893_01_setup.ipynb"]
    assert report.missing == ["mlopez"]


def test_moodle_zip_folders_and_flattened_names(course, tmp_path):
    """Moodle's `Name_123_assignsubmission_file_/` folders (and its flattened variant) name the student."""
    bulk = tmp_path / "moodle.zip"
    bulk.write_bytes(make_zip({
        "Jane Doe_12345_assignsubmission_file_/01_setup.ipynb": notebook("jane"),
        "Ali Khan_12346_assignsubmission_file_01_setup.ipynb": notebook("ali"),
        "Maria Lopez_12347_assignsubmission_onlinetext_/onlinetext.html": b"<p>hi</p>",
    }))
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert sorted(p.student_id for p in report.placed) == ["jdoe", "s102"]
    assert reasons(report) == {"onlinetext.html": "not a notebook (.ipynb)"}
    assert report.missing == ["mlopez"]


def test_moodle_names_without_roster_become_ids(course, tmp_path):
    bulk = tmp_path / "moodle.zip"
    bulk.write_bytes(make_zip({"Jane Doe_12345_assignsubmission_file_/01_setup.ipynb": notebook("jane")}))
    assert [p.student_id for p in collect(LESSON, [bulk], course).placed] == ["jane_doe"]


def test_nested_zips_and_a_wrapper_folder(course, tmp_path):
    """Is a zip inside a zip opened, its name naming the student, and a shared top folder ignored?"""
    inner = make_zip({"work/01_setup.ipynb": notebook("jane")})
    bulk = tmp_path / "class.zip"
    bulk.write_bytes(make_zip({"week1/doejane_12345_67890_handin.zip": inner,
                               "week1/akhan/01_setup.ipynb": notebook("ali")}))
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert sorted(p.student_id for p in report.placed) == ["jdoe", "s102"]
    assert placed(course, "jdoe") == notebook("jane")


def test_the_latest_file_wins_by_zip_time_and_the_other_is_reported(course, tmp_path):
    bulk = tmp_path / "two.zip"
    bulk.write_bytes(make_zip({"jdoe/01_setup.ipynb": (notebook("new"), (2026, 11, 30, 18, 0, 0)),
                               "jdoe/Copy of 01_setup.ipynb": (notebook("old"), (2026, 11, 29, 9, 0, 0))}))
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert placed(course, "jdoe") == notebook("new")
    assert "older file of jdoe" in reasons(report)["Copy of 01_setup.ipynb"]
    assert (course / "submitted" / "jdoe" / LESSON / "timestamp.txt").read_text() == "2026-11-30 18:00:00.000000 UTC"


def test_unknown_names_other_lessons_and_nameless_files_are_reported(course, tmp_path):
    src = folder(tmp_path, "mixed", {"jdoe_05_gradcam.ipynb": notebook("wrong lesson"), "stranger.ipynb": notebook("?"),
                                     "01_setup.ipynb": notebook("whose?"), "notes.txt": b"hello"})
    report = collect(LESSON, [src], course, roster=ROSTER)
    assert report.placed == []
    why = reasons(report)
    assert "lesson 05_gradcam's notebook" in why["jdoe_05_gradcam.ipynb"]
    assert "not in the roster" in why["stranger.ipynb"]
    assert "name no student" in why["01_setup.ipynb"]
    assert why["notes.txt"] == "not a notebook (.ipynb)"
    assert report.missing == ["jdoe", "s102", "mlopez"]


def test_zip_slip_is_refused_and_nothing_lands_outside_the_course(course, tmp_path):
    """Are `../` and absolute paths refused, and is every write inside the course folder?"""
    bulk = tmp_path / "evil.zip"
    bulk.write_bytes(make_zip({"../../01_setup.ipynb": notebook("up"), "/tmp/jdoe/01_setup.ipynb": notebook("abs"),
                               "jdoe/../../../gradebook.db": b"x", "akhan/01_setup.ipynb": notebook("ali")}))
    outside = {p: b for p, b in tree(tmp_path).items() if not p.startswith("course/")}
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert [p.student_id for p in report.placed] == ["s102"]
    assert sum("zip-slip" in u.reason for u in report.unplaced) == 3
    assert {p: b for p, b in tree(tmp_path).items() if not p.startswith("course/")} == outside
    assert not (course / "gradebook.db").exists()
    assert not Path("/tmp/jdoe/01_setup.ipynb").exists()


def test_a_zip_bomb_is_capped(course, tmp_path):
    """Is an entry that unpacks past the cap refused without being unpacked in full?"""
    bulk = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bulk, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("jdoe/01_setup.ipynb", "w") as f:
            chunk = b"\0" * (1 << 20)
            for _ in range((MAX_FILE_BYTES >> 20) + 1):
                f.write(chunk)
    assert bulk.stat().st_size < MAX_FILE_BYTES // 100
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert report.placed == [] and "cap" in report.unplaced[0].reason
    assert not (course / "submitted" / "jdoe").exists()


def test_collecting_again_changes_nothing(course, tmp_path):
    src = folder(tmp_path, "flat", {"jdoe.ipynb": notebook("a")})
    collect(LESSON, [src], course, roster=ROSTER)
    before = tree(course)
    again = collect(LESSON, [src], course, roster=ROSTER)
    assert again.placed == [] and [p.student_id for p in again.unchanged] == ["jdoe"]
    assert tree(course) == before


def test_a_newer_submission_replaces_and_keeps_the_older_one(course, tmp_path):
    """Nothing is overwritten silently: a newer file moves the earlier one to replaced/; an older one is refused."""
    old, new = tmp_path / "old.zip", tmp_path / "new.zip"
    old.write_bytes(make_zip({"jdoe/01_setup.ipynb": notebook("v1")}, when=(2026, 11, 29, 9, 0, 0)))
    new.write_bytes(make_zip({"jdoe/01_setup.ipynb": notebook("v2")}, when=(2026, 11, 30, 9, 0, 0)))
    collect(LESSON, [new], course, roster=ROSTER)
    refused = collect(LESSON, [old], course, roster=ROSTER)
    assert refused.placed == [] and "--replace" in refused.unplaced[0].reason
    assert placed(course, "jdoe") == notebook("v2")
    forced = collect(LESSON, [old], course, roster=ROSTER, replace=True)
    assert placed(course, "jdoe") == notebook("v1") and "replaced" in forced.placed[0].note
    kept = list((course / "replaced" / "jdoe" / LESSON).rglob("01_setup.ipynb"))
    assert [p.read_bytes() for p in kept] == [notebook("v2")]


def test_symlinks_in_a_source_folder_are_not_followed(course, tmp_path):
    src = tmp_path / "links"
    src.mkdir()
    secret = tmp_path / "secret.ipynb"
    secret.write_bytes(notebook("secret"))
    os.symlink(secret, src / "jdoe.ipynb")
    report = collect(LESSON, [src], course, roster=ROSTER)
    assert report.placed == [] and "symbolic link" in report.unplaced[0].reason


def test_the_table_lists_placed_missing_and_unplaced(course, tmp_path):
    src = folder(tmp_path, "flat", {"jdoe.ipynb": notebook("a"), "readme.md": b"hi"})
    table = collect(LESSON, [src], course, roster=ROSTER).table()
    assert "1 placed" in table and "missing    s102" in table and "readme.md: not a notebook" in table


@pytest.mark.parametrize("text,message", [
    ("name,email\nx,y\n", "'id' column"),
    ("id,first_name\n../x,A\n", "cannot be a folder name"),
    ("id\nx\nx\n", "appears twice"),
])
def test_a_bad_roster_is_named(tmp_path, text, message):
    path = tmp_path / "roster.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_roster(path)


def test_an_unknown_lesson_or_source_is_named(course, tmp_path):
    with pytest.raises(ValueError, match="no lesson '99_x'"):
        collect("99_x", [tmp_path], course)
    with pytest.raises(ValueError, match="not a folder, a zip or a notebook"):
        collect(LESSON, [tmp_path / "nothing.txt"], course)


def test_an_nbgrader_style_tree_is_taken_as_it_is(course, tmp_path):
    """submitted/<id>/<lesson>/<lesson>.ipynb from another course folder: the lesson folder names no one."""
    bulk = tmp_path / "exchange.zip"
    bulk.write_bytes(make_zip({"submitted/jdoe/01_setup/01_setup.ipynb": notebook("jane"),
                               "submitted/akhan/01_setup/01_setup.ipynb": notebook("ali")}))
    report = collect(LESSON, [bulk], course, roster=ROSTER)
    assert sorted(p.student_id for p in report.placed) == ["jdoe", "s102"]
    assert placed(course, "s102") == notebook("ali")


@pytest.mark.parametrize("lesson", ["../source", "", ".hidden", "a/b"])
def test_a_lesson_name_that_is_a_path_is_refused(course, tmp_path, lesson):
    with pytest.raises(ValueError, match="is not a lesson name"):
        collect(lesson, [tmp_path], course)
