"""The instructor's week on the example class, end to end: what `make demo` (`course workflow`) runs.

A fresh nbgrader course folder is made from the repository's `solutions/` (rerunning reuses it:
release is regenerated, collect finds the same files unchanged, grade skips what is graded), then:
the default model, release, collect the LMS downloads with the roster, grade in the sandbox in
parallel, look for alike solutions (`similarity`), review one flagged submission (`review.decide`),
feedback pages, and the grades that leave: the grades CSV, the class's Canvas gradebook filled in and
a Moodle grades CSV, with the example's `course.toml` late policy applied and unreviewed flagged work
held back (both listed); then the gradebook table. Each step returns the library's own structured
result, gathered in `Workflow`.
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
from .final import final_grades
from .grade import Report, grade
from .gradebook import Course, outcomes
from .late import CONFIG
from .lms import LmsReport, export_for_lms
from .overview import grade_rows, gradebook_table, held_back, note_export, write_csv
from .release import Released, release
from .review import Decision, Item, decide, queue
from .roster import import_roster, read_roster
from .sandbox import Limits
from .similarity import SimilarityReport, similarity

REPOSITORY = layout.ROOT
EXAMPLE = layout.EXAMPLE_CLASS
EXAMPLE_LESSONS = ("01_setup", "05_gradcam")
# The example class has two infinite loops: a shorter cell limit than `course grade`'s 60 s keeps the demo brisk.
EXAMPLE_LIMITS = Limits(cell_seconds=20.0, notebook_seconds=300.0, memory_bytes=2048 << 20, cpu_seconds=480)
# The demo's review: the sandbox denied ipetrov's write and his answers are his own, so his flagged 01_setup is accepted.
EXAMPLE_REVIEW = ("01_setup", "ipetrov", "accept", None,
                  "the write to gradebook.db was denied by the sandbox; the answers are his own")
STEPS = 8


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
    similar: list[SimilarityReport] = dataclasses.field(default_factory=list)
    to_review: tuple[list[Item], list[Item]] = ([], [])     # the reviewed lesson's queue before and after
    decision: Decision | None = None
    lms: list[LmsReport] = dataclasses.field(default_factory=list)   # the Canvas upload, the Moodle grades
    held_back: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)   # (lesson, student, why)
    late: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)        # (lesson, student, note)


def check_similarity(done: Workflow, lessons: tuple[str, ...], log: Callable[[str], None]) -> None:
    """Compare every lesson's solutions (student pairs and known sources); log the top pairs and the pages."""
    for lesson in lessons:
        report = similarity(lesson, done.course)
        done.similar.append(report)
        log(report.table())
        log(f"      review page: {report.html_path}")


def review_one(done: Workflow, log: Callable[[str], None], review: tuple = EXAMPLE_REVIEW) -> None:
    """Decide one flagged submission as `course review --student ID --accept` would; log the queue around it."""
    lesson, student, action, score, note = review
    before = queue(done.course, lesson)
    log(f"      waiting for review in {lesson}: {', '.join(i.outcome.student_id for i in before if i.waiting) or 'none'}")
    done.decision = decide(done.course, lesson, student, action, score, note, by="demo")
    after = queue(done.course, lesson)
    done.to_review = (before, after)
    log(f"      {student}: {done.decision.describe()}")
    log(f"      waiting for review in {lesson}: {', '.join(i.outcome.student_id for i in after if i.waiting) or 'none'}")


def export_grades(done: Workflow, example: Path, lessons: tuple[str, ...], log: Callable[[str], None]) -> None:
    """The grades that leave: our CSV, the class's Canvas gradebook filled in, Moodle's grades CSV; log what
    the late policy took and what is held back."""
    course = Course.open(done.course)
    columns, rows = grade_rows(course, list(lessons))
    done.grades_csv = write_csv(done.course / "grades.csv", columns, rows)
    note_export(course, list(lessons), done.grades_csv)
    log(f"      grades: {done.grades_csv} ({len(rows)} students)")
    done.lms = [export_for_lms(course, done.course / "canvas_upload.csv", canvas=example / "canvas_gradebook.csv"),
                export_for_lms(course, done.course / "moodle_grades.csv", moodle=True)]
    for report in done.lms:
        log("\n".join("      " + line for line in report.lines() if "no grade yet" not in line))
    for lesson in lessons:
        for sid, final in final_grades(course, lesson, outcomes(course, lesson)).items():
            done.late += [(lesson, sid, note) for note in final.notes if note.startswith("late: ")]
    done.held_back = held_back(course, list(lessons))
    log("      late:" + "".join(f"\n        {lesson} {sid}: {note}" for lesson, sid, note in done.late))
    log("      held back (empty cells until reviewed):"
        + "".join(f"\n        {lesson} {sid}: {why}" for lesson, sid, why in done.held_back))


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
    if (Path(example) / CONFIG).is_file():          # due dates, extensions, the late policy
        shutil.copyfile(Path(example) / CONFIG, Path(course_dir) / CONFIG)
    done = Workflow(Path(course_dir).resolve())
    log(f"[1/{STEPS}] course folder {done.course}")
    prepare_model(log)
    log(f"[2/{STEPS}] release {', '.join(lessons)} (nbgrader generate_assignment, gradebook entries)")
    done.released = release(course_dir, list(lessons))
    roster = read_roster(roster_file)
    import_roster(Course.open(course_dir), roster)
    log(f"[3/{STEPS}] collect the LMS downloads with the roster ({len(roster.students)} students)")
    for lesson, archive in archives.items():
        report = collect(lesson, [archive], course_dir, roster=roster)
        done.collected.append(report)
        log(report.table())
    log(f"[4/{STEPS}] grade in the sandbox, {workers or os.cpu_count()} workers")
    done.graded = grade(list(lessons), course_dir, workers=workers, limits=limits, progress=progress, log=log)
    log(f"      {len(done.graded.results)} graded now, {len(done.graded.skipped)} unchanged since the last run")
    log(f"[5/{STEPS}] similarity: alike solutions, for review (no grade changes)")
    check_similarity(done, lessons, log)
    log(f"[6/{STEPS}] review: one flagged submission decided (course review {EXAMPLE_REVIEW[0]} "
        f"--student {EXAMPLE_REVIEW[1]} --{EXAMPLE_REVIEW[2]})")
    review_one(done, log)
    log(f"[7/{STEPS}] feedback pages")
    for lesson in lessons:
        done.pages.extend(feedback(lesson, course_dir))
    log(f"[8/{STEPS}] grades that leave: CSV, Canvas upload, Moodle import (late policy applied, unreviewed held back)")
    export_grades(done, Path(example), lessons, log)
    done.table = gradebook_table(course_dir, list(lessons))
    return done
