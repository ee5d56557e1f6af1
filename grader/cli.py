"""The `course` command: the instructor's verbs (release, collect, grade, feedback, export, status).

`course demo` runs that week on `examples/class/` in a scratch course folder (what `make demo` does);
`course figure` draws the Grad-CAM figure of one validation image. Each verb parses, validates, calls
the library and maps its errors to exit codes. Installed as the `course` console script;
`python -m grader` is the same command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import layout

EXIT_USAGE, EXIT_SANDBOX, EXIT_INTERRUPTED = 2, 3, 130
DEFAULT_COURSE = layout.default_course()


def main(argv: list[str] | None = None) -> int:
    """Run the `course` command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="course", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the whole instructor workflow on the example class (what `make demo` runs)",
                       description="In a scratch course folder: load or train the default model, release, collect "
                                   "examples/class/*.zip with its roster, grade in the sandbox, write feedback pages "
                                   "and grades.csv, print the gradebook. Rerunning reuses what is done.")
    p.add_argument("--out", type=Path, default=Path("outputs") / "example-class", help="the scratch course folder")
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxed workers (default: CPU cores)")
    p.set_defaults(run=_demo)
    p = sub.add_parser("figure", help="build data and model (offline default), save a Grad-CAM figure")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for gradcam.png")
    p.add_argument("--online", action="store_true",
                   help="real PETS + pretrained resnet34 (needs internet; default: offline SynthPets)")
    p.add_argument("--index", type=int, default=0, help="which validation image to explain")
    p.set_defaults(run=_figure)
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _figure(args: argparse.Namespace) -> int:
    from course_utils.figure import figure
    path = figure(args.out, online=args.online or None, index=args.index)
    print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import warnings
    from .workflow import run_example
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    from . import SandboxUnavailable
    try:
        done = run_example(args.out, workers=args.workers, log=lambda m: print(m, flush=True))
    except SandboxUnavailable as e:      # the example class has hostile notebooks: never run them unconfined
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    print("\nGradebook (score/max status):\n" + done.table)
    flagged = [p for p in done.pages if p.status in ("flagged", "failed", "not graded")]
    print(f"\nfeedback pages: {done.course / 'feedback'}/<student>/<lesson>/<lesson>.html ({len(done.pages)} pages)"
          + "".join(f"\n  {p.status}: {p.path}" for p in flagged))
    print(f"grades for the LMS: {done.grades_csv}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the grading verbs on the `course` command's sub-parsers."""
    p = sub.add_parser("grade", help="grade every submission of assignments (sandboxed, parallel, resumable)",
                       description="Grade submitted/<student>/<ASSIGNMENT>/*.ipynb into nbgrader's gradebook. "
                                   "Several assignments share one pool of workers.")
    p.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="assignment name(s), e.g. 05_gradcam")
    p.add_argument("--all", action="store_true", help="every assignment in the course's source folder")
    _course_option(p)
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxed workers (default: CPU cores)")
    p.add_argument("--force", action="store_true", help="regrade submissions that are already graded")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler instead of local workers")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run student code unconfined (only where isolation is impossible and you trust the code)")
    p.add_argument("--without", action="append", default=[], metavar="LAYER",
                   choices=("landlock", "mount", "pid", "network"),
                   help="grade with one sandbox layer fewer where this machine cannot give it "
                        "(landlock, mount, pid or network; repeatable)")
    p.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per cell (default 60)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per notebook (default 600)")
    p.add_argument("--memory", type=int, default=4096, help="MB of memory per notebook run (default 4096)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_grade)
    p = sub.add_parser("export", help="write the grades as CSV: every lesson (one row per student), or one lesson",
                       description="Without ASSIGNMENT (or with --all): one row per student of the roster and the "
                                   "gradebook, one score column per lesson plus total, as an LMS gradebook import "
                                   "wants. With ASSIGNMENT: student_id, assignment, score, max_score, status, reasons.")
    p.add_argument("assignment", nargs="?", metavar="ASSIGNMENT", help="one assignment, e.g. 05_gradcam")
    p.add_argument("--all", action="store_true", help="every lesson in the gradebook (the default without ASSIGNMENT)")
    _course_option(p)
    p.add_argument("--to", type=Path, required=True, metavar="FILE.csv", help="where to write the CSV")
    p.set_defaults(run=_export)
    p = sub.add_parser("release", help="generate the student notebooks and the gradebook entries from the sources",
                       description="nbgrader generate_assignment for each lesson: solutions become stubs, hidden "
                                   "tests are removed, outputs cleared; the gradebook records cells and points.")
    p.add_argument("lessons", nargs="*", metavar="LESSON", help="lesson(s) to release (default: all)")
    _course_option(p)
    p.set_defaults(run=_release)
    p = sub.add_parser("feedback", help="write one HTML feedback page per student, with why each point was lost",
                       description="feedback/<student>/<LESSON>/<notebook>.html: nbgrader's feedback with a summary "
                                   "on top; hidden tests are never shown. Students with nothing get a page too.")
    p.add_argument("lesson", metavar="LESSON", help="assignment name, e.g. 05_gradcam")
    _course_option(p)
    p.set_defaults(run=_feedback)
    p = sub.add_parser("status", help="per lesson: released, collected, graded, flagged, failed, not graded, "
                                         "exported")
    _course_option(p)
    p.set_defaults(run=_status)
    p = sub.add_parser("collect", help="place what students handed in (folders, zips, LMS downloads) into submitted/",
                       description="SOURCE: a folder, zip or notebook: one file or folder per student, a Canvas or "
                                   "Moodle bulk download, zips inside zips. The latest file of each student wins; "
                                   "a different submission already in place is kept if newer, else moved to replaced/.")
    p.add_argument("lesson", metavar="LESSON", help="assignment name, e.g. 05_gradcam")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder(s), zip(s) or notebook(s)")
    p.add_argument("--roster", type=Path, help="nbgrader's student CSV (id,first_name,last_name,email); "
                                               "without it, the names in the files become the ids")
    p.add_argument("--replace", action="store_true", help="use these files even where an already placed one is newer")
    _course_option(p)
    p.set_defaults(run=_collect)


def _course_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--course", type=Path, default=DEFAULT_COURSE,
                   help=f"nbgrader course directory (default: {DEFAULT_COURSE})")


def _collect(args: argparse.Namespace) -> int:
    from .collect import collect
    from .gradebook import Course
    from .roster import import_roster, read_roster
    roster = read_roster(args.roster) if args.roster else None
    report = collect(args.lesson, args.sources, args.course, roster=roster, replace=args.replace)
    if roster:
        import_roster(Course.open(args.course), roster)
    print(report.table())
    return 0


def _grade(args: argparse.Namespace) -> int:
    import warnings
    from . import Limits, SandboxUnavailable, grade
    warnings.filterwarnings("ignore", module="nbgrader")       # SQLAlchemy notes from inside nbgrader's API
    warnings.filterwarnings("ignore", message=".*not in session.*")
    if args.cell_timeout <= 0 or args.timeout <= 0 or args.memory < 256:
        print("error: --cell-timeout and --timeout must be positive and --memory at least 256 (MB)", file=sys.stderr)
        return EXIT_USAGE
    limits = Limits(cell_seconds=args.cell_timeout, notebook_seconds=args.timeout,
                    memory_bytes=args.memory << 20, cpu_seconds=int(args.timeout * 1.5) + 30)
    try:
        assignments = _assignments(args)
        report = grade(assignments, args.course, workers=args.workers, force=args.force,
                       scheduler=args.scheduler, isolate=not args.no_sandbox, limits=limits,
                       progress=not args.quiet, log=lambda m: print(m, file=sys.stderr), without=args.without)
    except SandboxUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    except KeyboardInterrupt:
        print("interrupted: what was graded is saved; run the same command again to grade the rest",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_summary(report))
    return 0


def _assignments(args: argparse.Namespace) -> list[str]:
    from .gradebook import Course
    if args.all == bool(args.assignments):
        raise ValueError("name the assignment(s) to grade, e.g. `course grade 05_gradcam`, or pass --all")
    return Course.open(args.course).assignments() if args.all else args.assignments


def _summary(report) -> str:
    lines = [f"{len(report.results)} submissions graded now, {len(report.skipped)} already graded "
             f"(unchanged), in {report.seconds:.1f} s"]
    for r in sorted(report.results, key=lambda r: (r.assignment, r.student_id)):
        lines.append(f"  {r.assignment:<20} {r.student_id:<20} {r.score:g}/{r.max_score:g}  {r.status}"
                     + (f"  ({'; '.join(r.reasons)})" if r.reasons else ""))
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    from .gradebook import EXPORT_COLUMNS, Course, export_rows
    from .overview import grade_rows, note_export, write_csv
    if args.all and args.assignment:
        raise ValueError("pass either ASSIGNMENT or --all, not both")
    course = Course.open(args.course)
    if args.assignment:
        columns, rows, lessons = list(EXPORT_COLUMNS), export_rows(course, args.assignment), [args.assignment]
    else:
        columns, rows = grade_rows(course)
        lessons = columns[4:-1]
    write_csv(args.to, columns, rows)
    note_export(course, lessons, args.to)
    print(f"wrote {len(rows)} rows to {args.to}")
    return 0


def _release(args: argparse.Namespace) -> int:
    from .release import release
    for r in release(args.course, args.lessons):
        print(f"released {r.lesson}: {', '.join(str(p) for p in r.notebooks)} (gradebook updated)")
    return 0


def _feedback(args: argparse.Namespace) -> int:
    import warnings
    from .feedback import feedback
    from .gradebook import NOT_GRADED
    warnings.filterwarnings("ignore", module="nbgrader")
    pages = feedback(args.lesson, args.course)
    for page in pages:
        score = "–" if page.status == NOT_GRADED else f"{page.score:g}"
        print(f"{page.student_id:<16} {score}/{page.max_score:g} {page.status:<10} {page.path}")
    print(f"wrote {len(pages)} feedback pages for {args.lesson}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .overview import status, status_table
    print(status_table(status(args.course)))
    return 0

if __name__ == "__main__":
    sys.exit(main())
