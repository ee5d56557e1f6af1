"""The `course` command's errors: each names the fix and changes nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grader.layout import ROOT


def course(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def empty_course(tmp_path):
    (tmp_path / "source" / "01_setup").mkdir(parents=True)
    return tmp_path


def test_help_lists_the_verbs():
    done = course("--help")
    assert done.returncode == 0
    for verb in ("demo", "grade", "export", "release", "collect", "feedback", "status", "review", "similarity"):
        assert verb in done.stdout


@pytest.mark.parametrize("args,message", [
    (["grade"], "name the assignment"),
    (["grade", "01_setup", "--all"], "name the assignment"),
    (["grade", "99_nope"], "no assignment '99_nope'"),
    (["grade", "../etc"], "is not an assignment name"),
    (["grade", "01_setup", "--workers", "0"], "--workers must be at least 1"),
    (["grade", "01_setup", "--memory", "10"], "--memory at least 256"),
    (["export", "01_setup", "--to", "grades.csv"], "no gradebook yet"),
    (["export", "--to", "grades.csv"], "no gradebook yet"),
    (["export", "01_setup", "--all", "--to", "grades.csv"], "either ASSIGNMENT or --all"),
    (["collect", "99_nope", "x.zip"], "no lesson '99_nope'"),
    (["collect", "01_setup", "x.zip", "--roster", "nope.csv"], "nope.csv does not exist"),
    (["feedback", "01_setup"], "no gradebook yet"),
    (["release", "99_nope"], "no such lesson"),
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(empty_course, args, message):
    before = sorted(p.relative_to(empty_course) for p in empty_course.rglob("*"))
    done = course(*args, "--course", str(empty_course), cwd=empty_course)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert sorted(p.relative_to(empty_course) for p in empty_course.rglob("*")) == before


def test_a_missing_course_folder_is_named(tmp_path):
    done = course("grade", "01_setup", "--course", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "is not a folder" in done.stderr
