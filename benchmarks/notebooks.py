"""Time every solution notebook top to bottom in a fresh kernel (default model already cached).

    PYTHONPATH=. python benchmarks/notebooks.py      # prints a Markdown table for the README

Each notebook runs in its own kernel, as nbgrader's autograde does, so the ~10 s fastai import is
included. Run it on an otherwise idle machine: with other jobs on the two cores the times double.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from grader.layout import ROOT


def run(path: Path) -> tuple[float, int]:
    """Seconds to execute one notebook, and how many cells raised."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = sum(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return time.perf_counter() - start, errors


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from course_utils.model import get_learner
    get_learner(online=False)  # make sure the cache exists: its one-off training is not a lesson's time
    print(f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}\n")
    print("| lesson | seconds | cells that raised |\n|---|---|---|")
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        seconds, errors = run(path)
        print(f"| {path.stem} | {seconds:.1f} | {errors} |", flush=True)


if __name__ == "__main__":
    main()
