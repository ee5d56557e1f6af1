"""What a grading worker imports before the first notebook: what the assignment's notebooks import.

A worker pays each import once and every sandboxed run forked from it gets it for free, but an
import nobody uses costs seconds too: torch, fastai and torchvision take about 6 s, and a
plain-Python assignment (nbgrader's `ps1`) needs none of them. So the modules to warm are read
from the instructor's source notebooks (top-level `import` and `from … import` statements of their
code cells) plus what the course declares in `course.toml`:

    [workers]
    warm = ["sklearn.linear_model"]     # imported too, before any notebook
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterable

# What every run needs, whatever the lesson: the shell the cells run in and its plot capture.
BASE = ("execnb.shell", "matplotlib_inline.backend_inline")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_MODULES = 200


def modules_of_source(source: str) -> list[str]:
    """The absolute module names a cell's code imports at its top level (magics and shell lines skipped)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError):
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def modules_of_notebook(path: Path) -> list[str]:
    """`modules_of_source` of every code cell of a notebook file (read as JSON: no nbformat needed)."""
    import json
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return []
    found = []
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            found.extend(modules_of_source("".join(source) if isinstance(source, list) else str(source)))
    return found


def modules_for(source_folders: Iterable[Path], declared: Iterable[str] = ()) -> tuple[str, ...]:
    """What workers grading these assignments should import: BASE, the notebooks' imports, `declared`.

    Order is kept (the first notebook's imports first), duplicates dropped, names checked."""
    names = list(BASE)
    for folder in source_folders:
        for path in sorted(Path(folder).glob("*.ipynb")):
            names.extend(modules_of_notebook(path))
    names.extend(declared)
    return checked(names)


def checked(names: Iterable[str]) -> tuple[str, ...]:
    """Module names, deduplicated in order; raises ValueError for anything that is not one."""
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a module name (e.g. numpy or fastai.vision.all)")
        if name not in out:
            out.append(name)
    if len(out) > MAX_MODULES:
        raise ValueError(f"{len(out)} modules to warm is more than the {MAX_MODULES} allowed")
    return tuple(out)


def import_all(names: Iterable[str]) -> list[str]:
    """Import each module (no torch operation runs: a fork after this is safe); returns those that failed.

    A module a notebook imports but this environment lacks is the notebook's problem, not the
    worker's: its run reports the ImportError like any other error."""
    import importlib
    import warnings
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    import matplotlib
    matplotlib.use("Agg")                      # before pyplot: no display in a worker
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:          # an import can raise anything (SystemExit included); none stops a worker
            failed.append(name)
    return failed
