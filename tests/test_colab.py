"""The lessons' Colab cell, run for real: in a fresh virtual environment without course_utils, the
first cell (Colab branch forced by COURSE_FORCE_COLAB=1, install source pointed at a copy of this
checkout by COURSE_INSTALL_SOURCE) pip-installs course_utils offline without replacing torch or
fastai, and the rest of the lesson then runs in that environment.

The fresh environment has its own, empty site-packages; the course environment's packages are
visible through a .pth file, as Colab's preinstalled torch and fastai are.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "01_setup"
PROBE = ("import json, torch, fastai, course_utils\n"
         "print(json.dumps({m.__name__: [getattr(m, '__version__', ''), m.__file__] "
         "for m in (torch, fastai, course_utils)}))")


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new venv (no pip of its own, no course_utils) that sees the course environment's packages."""
    where = tmp_path_factory.mktemp("colab")
    env = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    (site_packages(python) / "_course_environment.pth").write_text(str(site_packages(Path(sys.executable))) + "\n")
    return python


def source_copy(dest: Path) -> Path:
    """What `pip install` needs from this checkout, copied so the build writes nothing into the repo."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest)
    for package in ("course_utils", "grader"):       # the project installs both (the `course` command is grader's)
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def versions(python: Path, env: dict, cwd: Path) -> dict:
    """Version and file of torch, fastai and course_utils as `python` imports them (from `cwd`)."""
    done = subprocess.run([str(python), "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_colab_cell_installs_course_utils_and_the_lesson_runs(fresh_env, tmp_path):
    python = fresh_env
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COURSE_FORCE_COLAB="1", COURSE_INSTALL_SOURCE=str(source_copy(tmp_path / "src")),
               PIP_NO_INDEX="1",                 # offline: nothing may come from an index
               PIP_NO_BUILD_ISOLATION="0",       # (pip's spelling of --no-build-isolation) build with the env's setuptools
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    missing = subprocess.run([str(python), "-c", "import course_utils"], env=env, cwd=work,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'course_utils'" in missing.stderr
    before = {k: v for k, v in versions(python, {**env, "PYTHONPATH": str(ROOT)}, work).items() if k != "course_utils"}

    nb = classroom.submission(LESSON, "correct")
    path = work / f"{LESSON}.ipynb"
    classroom.write(nb, path)
    # The lesson is executed by a kernel of the fresh environment: nbconvert run by its python
    # starts the `python3` kernel with that same interpreter.
    done = subprocess.run([str(python), "-m", "nbconvert", "--to", "notebook", "--execute",
                           "--inplace", "--ExecutePreprocessor.timeout=600", str(path)],
                          env=env, cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    ran = nbformat.read(path, as_version=4)
    first = ran.cells[1]
    assert "COURSE_FORCE_COLAB" in first.source and "%pip install" in first.source
    errors = [(c.get("id"), o.get("ename"), o.get("evalue")) for c in ran.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code")

    after = versions(python, env, work)                 # no PYTHONPATH: course_utils must be installed
    installed = Path(after["course_utils"][1])
    assert installed.is_relative_to(site_packages(python)), installed
    assert not installed.is_relative_to(ROOT)
    assert {k: v for k, v in after.items() if k != "course_utils"} == before   # same torch, same fastai
    assert not any(site_packages(python).glob("torch*")) and not any(site_packages(python).glob("fastai*"))
