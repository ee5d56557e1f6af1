"""The control process never imports torch or fastai: `course status`, `export`, `feedback`, `collect`
and the control side of `course grade` (its workers import them, in processes of their own).

Each command runs as `grader.cli.main([...])` in a fresh Python that then reports which torch and
fastai modules it holds. The course is test_grader_outcome's (lesson 01_setup: students graded, not
graded yet, handed in again, missing), reused rather than rebuilt; commands that change it get a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grader.gradebook import Course, outcome
from grader.layout import EXAMPLE_CLASS, ROOT
from test_grader_outcome import LESSON, course  # noqa: F401  (course: that module's fixture, reused here)

pytestmark = pytest.mark.filterwarnings("ignore:.*not in session")    # SQLAlchemy notes from nbgrader's API

HEAVY = ("torch", "fastai")
PROBE = f"""import json, sys
from grader.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": sorted(set({HEAVY!r}) & set(sys.modules))}}))
"""


def control(*args: str, timeout: float = 600) -> dict:
    """`course ARGS` through grader.cli.main in a fresh Python: its exit code and which of torch, fastai it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def copy_of(course: Path, to: Path) -> Path:
    """A copy of the course for a command that changes it (the fixture is shared by the module)."""
    shutil.copytree(course, to)
    return to


@pytest.mark.parametrize("command", [["status"], ["export", LESSON, "--to", "{tmp}/lesson.csv"],
                                     ["export", "--all", "--to", "{tmp}/all.csv"], ["feedback", LESSON]],
                         ids=["status", "export", "export-all", "feedback"])
def test_a_reading_command_imports_neither_torch_nor_fastai(course, tmp_path, command):  # noqa: F811
    args = [a.format(tmp=tmp_path) for a in command]
    assert control(*args, "--course", str(course)) == {"code": 0, "heavy": []}


def test_collect_imports_neither_torch_nor_fastai(course, tmp_path):  # noqa: F811
    folder = copy_of(course, tmp_path / "course")
    answer = control("collect", LESSON, str(EXAMPLE_CLASS / f"{LESSON}.zip"), "--roster",
                     str(EXAMPLE_CLASS / "roster.csv"), "--course", str(folder))
    assert answer == {"code": 0, "heavy": []}
    assert (folder / "submitted" / "aokafor" / LESSON).is_dir()          # it did place the class


def test_the_control_side_of_grade_imports_neither_torch_nor_fastai(course, tmp_path):  # noqa: F811
    """Is a real run (sandboxed notebooks on one worker) graded with torch only in the worker processes?"""
    folder = copy_of(course, tmp_path / "course")
    answer = control("grade", LESSON, "--course", str(folder), "--workers", "1", "--quiet")
    assert answer == {"code": 0, "heavy": []}
    c = Course.open(folder)
    assert {s: outcome(c, LESSON, s).status for s in ("waiting", "killed", "again")} == dict.fromkeys(
        ("waiting", "killed", "again"), "graded")
