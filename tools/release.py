"""Regenerate the student release: `notebooks/` from the nbgrader sources in `solutions/`.

    make release          # or: python tools/release.py [lesson ...]

Runs `nbgrader generate_assignment --no-db --force` once per lesson from the repository root
(see nbgrader_config.py), so solutions are replaced by stubs, hidden tests are removed and outputs
cleared. notebooks/ is never edited by hand; tests/test_notebooks.py checks it is up to date.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lessons() -> list[str]:
    """Every assignment in solutions/, in course order (their names start with the lesson number)."""
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def release(names: list[str], release_dir: Path | None = None) -> None:
    """Generate the student version of each lesson into release_dir (default: notebooks/)."""
    extra = [f"--CourseDirectory.release_directory={release_dir}"] if release_dir else []
    for name in names:
        cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--no-db", "--force",
               "--log-level=WARN", *extra]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"generate_assignment {name} failed:\n{done.stdout}\n{done.stderr}")


if __name__ == "__main__":
    wanted = sys.argv[1:] or lessons()
    unknown = sorted(set(wanted) - set(lessons()))
    if unknown:
        raise SystemExit(f"no such lesson in solutions/: {', '.join(unknown)}; choose from {', '.join(lessons())}")
    release(wanted)
    print(f"released {len(wanted)} lesson(s) into notebooks/")
