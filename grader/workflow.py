"""The instructor's week on the example class, end to end: what `make demo` (`course workflow`) runs.

A fresh nbgrader course folder is made from the repository's `solutions/` (rerunning reuses it:
release is regenerated, collect finds the same files unchanged, grade skips what is graded), then:
the default model, release, collect the LMS downloads with the roster, grade in the sandbox in
parallel, feedback pages, the grades CSV, and the gradebook table. Each step returns the library's
own structured result, gathered in `Workflow`.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import layout
from .collect import Collected, collect
from .feedback import Page, feedback
from .grade import Report, grade
from .gradebook import Course
from .overview import grade_rows, gradebook_table, note_export, write_csv
from .release import Released, release
from .roster import import_roster, read_roster
from .sandbox import Limits

REPOSITORY = layout.ROOT
EXAMPLE = layout.EXAMPLE_CLASS
EXAMPLE_LESSONS = ("01_setup", "05_gradcam")
# The example class has two infinite loops: a shorter cell limit than `course grade`'s 60 s keeps the demo brisk.
EXAMPLE_LIMITS = Limits(cell_seconds=20.0, notebook_seconds=300.0, memory_bytes=2048 << 20, cpu_seconds=480)


def new_course(folder: str | os.PathLike, lessons: list[str] | tuple[str, ...], root: Path = REPOSITORY) -> Path:
    """A scratch nbgrader course: the lessons' sources (source/), the repository's settings, release/ for the release."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for lesson in lessons:
        shutil.copytree(root / "solutions" / lesson, folder / "source" / lesson, dirs_exist_ok=True)
    settings = (root / "nbgrader_config.py").read_text()
    (folder / "nbgrader_config.py").write_text(
        settings + '\nc.CourseDirectory.source_directory = "source"\nc.CourseDirectory.release_directory = "release"\n')
    return folder


def prepare_model(log: Callable[[str], None] = print) -> None:
    """Load the default model, or train it once with a line per epoch (in a child process: the grader stays small)."""
    code = ("import warnings; warnings.filterwarnings('ignore');"
            "from course_utils.model import get_learner, model_cache_file, train_config;"
            "cached = model_cache_file(train_config()).exists();"
            "get_learner(online=False, log=lambda m: print(m, flush=True));"
            "print('default model: ' + ('loaded from the cache' if cached else 'trained and cached'), flush=True)")
    env = {**os.environ, "PYTHONPATH": layout.python_path(os.environ.get("PYTHONPATH"))}
    with tempfile.TemporaryFile("w+") as errors:      # a file, not a pipe: a chatty stderr cannot block the child
        with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=errors,
                              text=True) as child:
            for line in child.stdout:
                log(line.rstrip())
        if child.returncode:
            errors.seek(0)
            raise RuntimeError(f"could not prepare the default model:\n{errors.read()[-2000:]}")


@dataclasses.dataclass
class Workflow:
    """What each step of the example class did."""
    course: Path
    released: list[Released] = dataclasses.field(default_factory=list)
    collected: list[Collected] = dataclasses.field(default_factory=list)
    graded: Report | None = None
    pages: list[Page] = dataclasses.field(default_factory=list)
    grades_csv: Path | None = None
    table: str = ""


def run_example(folder: str | os.PathLike, example: Path = EXAMPLE, lessons: tuple[str, ...] = EXAMPLE_LESSONS,
                workers: int | None = None, limits: Limits = EXAMPLE_LIMITS, progress: bool = True,
                log: Callable[[str], None] = print) -> Workflow:
    """Run the instructor's workflow on the example class in `folder`; see the module docstring."""
    roster_file = Path(example) / "roster.csv"
    archives = {lesson: Path(example) / f"{lesson}.zip" for lesson in lessons}
    for path in [roster_file, *archives.values()]:
        if not path.is_file():
            raise ValueError(f"{path} is missing: run `python tools/example_class.py` to generate the example class")
    course_dir = new_course(folder, lessons)
    done = Workflow(Path(course_dir).resolve())
    log(f"[1/6] course folder {done.course}")
    prepare_model(log)
    log(f"[2/6] release {', '.join(lessons)} (nbgrader generate_assignment, gradebook entries)")
    done.released = release(course_dir, list(lessons))
    roster = read_roster(roster_file)
    import_roster(Course.open(course_dir), roster)
    log(f"[3/6] collect the LMS downloads with the roster ({len(roster.students)} students)")
    for lesson, archive in archives.items():
        report = collect(lesson, [archive], course_dir, roster=roster)
        done.collected.append(report)
        log(report.table())
    log(f"[4/6] grade in the sandbox, {workers or os.cpu_count()} workers")
    done.graded = grade(list(lessons), course_dir, workers=workers, limits=limits, progress=progress, log=log)
    log(f"      {len(done.graded.results)} graded now, {len(done.graded.skipped)} unchanged since the last run")
    log("[5/6] feedback pages")
    for lesson in lessons:
        done.pages.extend(feedback(lesson, course_dir))
    columns, rows = grade_rows(Course.open(course_dir), list(lessons))
    done.grades_csv = write_csv(done.course / "grades.csv", columns, rows)
    note_export(Course.open(course_dir), list(lessons), done.grades_csv)
    log(f"[6/6] grades: {done.grades_csv} ({len(rows)} students)")
    done.table = gradebook_table(course_dir, list(lessons))
    return done
