"""The project's own promises: one pinned list, loose package metadata, a quiet import, documented API."""
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from grader.layout import ROOT

PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)")


def pins(path: Path) -> dict[str, str]:
    return {m[1].lower(): m[2] for line in path.read_text().splitlines() if (m := PIN.match(line))}


def test_environment_yml_carries_the_same_pins_as_requirements():
    req = pins(ROOT / "requirements.txt")
    assert {"torch", "torchvision", "fastai", "nbgrader", "jupyterlab", "ipywidgets", "pytest",
            "captum", "grad-cam", "torchcam"} <= set(req)
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    assert pins(ROOT / "environment.yml") == req


def test_package_metadata_never_pins_torch_or_fastai():
    """A Colab `pip install` of course_utils must keep Colab's torch and fastai."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        assert "==" not in dep and "<" not in dep and "~=" not in dep, dep
    assert not any(d.split(">")[0].strip() in {"captum", "grad-cam", "torchcam"} for d in deps)


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert (ROOT / ".ci/run").read_text().strip().splitlines()[-1] == "make test"


def test_importing_course_utils_does_no_work(tmp_path):
    code = ("import sys, course_utils; "
            "heavy = [m for m in ('fastai', 'captum', 'pytorch_grad_cam', 'torchcam', 'matplotlib.pyplot') "
            "if m in sys.modules]; print(heavy)")
    env = {**os.environ, "COURSE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "cache").exists()


def test_every_public_function_says_what_it_does_and_is_typed():
    import course_utils
    for name in course_utils.__all__:
        obj = getattr(course_utils, name)
        assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            untyped = [p for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
            assert not untyped, f"{name}: parameters without type hints: {untyped}"
