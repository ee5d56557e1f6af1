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
    _light_imports()
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


# Optional libraries jsonschema imports for its format checker (URIs, dates, colours); nbformat
# validates without one. rfc3987_syntax alone builds a grammar at import: 1-1.5 s.
_FORMAT_CHECKER_EXTRAS = ("rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "isoduration",
                          "uri_template", "webcolors", "jsonpointer", "fqdn")


def _light_imports() -> None:
    """Keep the control process light (`course status` answers within a second): imports that cost
    2.7 s and serve nothing here are skipped. jsonschema (under nbformat) imports the optional
    libraries of its format checker if it can (`_FORMAT_CHECKER_EXTRAS`), which nothing here uses;
    nbgrader's package `__init__` loads its Jupyter server extensions (jupyter_server, the
    formgrader's handlers, nbconvert: 1.4 s) before `nbgrader.api` or `nbgrader.coursedir` can be
    imported. The package is registered without running that `__init__`; every nbgrader module
    imports as usual, and nbgrader's own commands (`make nbgrader`, the formgrader) are other
    processes, untouched."""
    for name in _FORMAT_CHECKER_EXTRAS:
        sys.modules.setdefault(name, None)
    if "nbgrader" in sys.modules:
        return
    import importlib
    import importlib.util
    spec = importlib.util.find_spec("nbgrader")
    if spec is None or not spec.submodule_search_locations:
        return
    sys.modules["nbgrader"] = importlib.util.module_from_spec(spec)
    sys.modules["nbgrader"].__version__ = importlib.import_module("nbgrader._version").__version__


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
    from .grade import SandboxUnavailable
    try:
        done = run_example(args.out, workers=args.workers, log=lambda m: print(m, flush=True))
    except SandboxUnavailable as e:      # the example class has hostile notebooks: never run them unconfined
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    print("\nGradebook (score/max status):\n" + done.table)
    flagged = [p for p in done.pages if p.status in ("flagged", "failed", "not graded")]
    print(f"\nfeedback pages: {done.course / 'feedback'}/<student>/<lesson>/<lesson>.html ({len(done.pages)} pages)"
          + "".join(f"\n  {p.status}: {p.path}" for p in flagged))
    print(f"grades: {done.grades_csv}" + "".join(f"\nfor {r.kind}: {r.path}" for r in done.lms))
    print("similarity pages: " + ", ".join(str(r.html_path) for r in done.similar))
    print(f"held back until reviewed: {len(done.held_back)}; late deductions: {len(done.late)}")
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
    p.add_argument("--force", action="store_true",
                   help="regrade every submission (without it, only new and stale ones: changed submission, "
                        "re-released tests, grader version or limits)")
    p.add_argument("--student", action="append", default=None, metavar="ID",
                   help="grade only this student (repeatable), whatever their result says")
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
    p.add_argument("--no-pool", action="store_true",
                   help="start workers for this call only (default: lease them from your warm pool, which "
                        "stays for --pool-idle minutes; also off with course.toml [workers] pool = false or "
                        "COURSE_POOL=off)")
    p.add_argument("--pool-idle", type=float, default=None, metavar="MINUTES",
                   help="how long a warm pool started now stays when idle (default: course.toml [workers] "
                        "idle_minutes, else 15)")
    p.set_defaults(run=_grade)
    p = sub.add_parser("workers", help="your warm pool of grading workers: status, or stop it",
                       description="`course grade` leases its workers from a pool of warm worker processes of "
                                   "yours (they never run student code), which stays until it has been idle "
                                   "for its idle time. status: what runs; stop: end it now.")
    p.add_argument("action", choices=("status", "stop"), help="status or stop")
    p.set_defaults(run=_workers)
    p = sub.add_parser("export", help="write the grades as CSV: every lesson (one row per student), or one lesson",
                       description="Without ASSIGNMENT (or with --all): one row per student of the roster and the "
                                   "gradebook, one score column per lesson plus total, as an LMS gradebook import "
                                   "wants. With ASSIGNMENT: student_id, assignment, score, max_score, status, reasons.")
    p.add_argument("assignment", nargs="?", metavar="ASSIGNMENT", help="one assignment, e.g. 05_gradcam")
    p.add_argument("--all", action="store_true", help="every lesson in the gradebook (the default without ASSIGNMENT)")
    _course_option(p)
    p.add_argument("--to", type=Path, required=True, metavar="FILE.csv", help="where to write the CSV")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="also export flagged scores nobody has reviewed (marked as unreviewed); "
                        "without it they are left out and listed")
    _lms_options(p)
    p.set_defaults(run=_export)
    p = sub.add_parser("review", help="decide on flagged, failed and partly graded work: accept, set or zero a score",
                       description="Lists the lesson's flagged, failed, partly and manually graded submissions with "
                                   "their reasons and evidence, waiting ones first. With --student and one of "
                                   "--accept/--set/--zero, records a decision (kept in the gradebook with its time). "
                                   "At a terminal without a decision flag, asks about each waiting one in turn.")
    p.add_argument("lesson", metavar="LESSON", help="assignment name, e.g. 05_gradcam")
    p.add_argument("--student", metavar="ID", help="the submission to decide on (or to show)")
    decision = p.add_mutually_exclusive_group()
    decision.add_argument("--accept", action="store_true", help="keep the computed score")
    decision.add_argument("--set", type=float, metavar="SCORE", help="give this score instead")
    decision.add_argument("--zero", action="store_true", help="give 0")
    p.add_argument("--note", default="", help="why (kept with the decision, shown on the review list)")
    p.add_argument("--list", action="store_true", help="only list, never ask (the default when not at a terminal)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    _course_option(p)
    p.set_defaults(run=_review)
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
    p = sub.add_parser("similarity", help="pairs of students whose solution code is unusually alike (for review)",
                       description="Compares each student's solution code for LESSON (answer cells and added code "
                                   "cells; the released template matches nothing) with every other student's and "
                                   "with course_utils, the reference answers and --known files, using copydetect's "
                                   "winnowing fingerprints. Prints the pairs at or above the threshold and writes "
                                   "similarity/LESSON.html. Changes no grade.")
    p.add_argument("lesson", metavar="LESSON", help="assignment name, e.g. 05_gradcam")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="list pairs where this share of one side's own code is found in the other "
                        "(default 0.6: honest answers to short exercises share up to about half)")
    p.add_argument("--known", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                   help="more known sources to compare with (.py or .ipynb, e.g. the book's chapter notebook)")
    _course_option(p)
    p.set_defaults(run=_similarity)


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
    if report.placed:          # the next step is `course grade LESSON`: its workers can import meanwhile
        from .grade import prestart_pool
        from .late import ConfigError
        try:
            if prestart_pool(args.course, [args.lesson], grade_limits(), log=lambda m: print(m, file=sys.stderr)):
                print("warm pool: started for `course grade`; its workers are importing what the lesson needs")
        except ConfigError as e:
            print(f"warning: {e}", file=sys.stderr)
    return 0


def _grade(args: argparse.Namespace) -> int:
    import warnings
    from .grade import SandboxUnavailable, grade
    warnings.filterwarnings("ignore", module="nbgrader")       # SQLAlchemy notes from inside nbgrader's API
    warnings.filterwarnings("ignore", message=".*not in session.*")
    if args.cell_timeout <= 0 or args.timeout <= 0 or args.memory < 256:
        print("error: --cell-timeout and --timeout must be positive and --memory at least 256 (MB)", file=sys.stderr)
        return EXIT_USAGE
    limits = grade_limits(args.cell_timeout, args.timeout, args.memory)
    try:
        assignments = _assignments(args)
        report = grade(assignments, args.course, workers=args.workers, force=args.force,
                       scheduler=args.scheduler, isolate=not args.no_sandbox, limits=limits,
                       progress=not args.quiet, log=lambda m: print(m, file=sys.stderr), without=args.without,
                       students=args.student, pool=False if args.no_pool else None, pool_idle=args.pool_idle)
    except SandboxUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    except KeyboardInterrupt:
        print("interrupted: what was graded is saved; run the same command again to grade the rest",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_summary(report))
    return 0


def _workers(args: argparse.Namespace) -> int:
    from . import pool
    folder = pool.pool_dir()
    if args.action == "stop":
        print("warm pool stopped" if pool.stop(folder) else "no warm pool is running")
        return 0
    info = pool.status(folder)
    if info is None:
        print(f"no warm pool is running ({folder}); `course grade` starts one")
        return 0
    if info.get("answering") is False:
        print(f"warm pool pid {info.get('pid')} does not answer: `course workers stop` ends it")
        return 1
    left = max(0.0, info["idle_seconds"] - info["idle_for"])
    busy = sum(w["leased"] for w in info["workers"])
    print(f"warm pool pid {info['pid']} in {folder}: {len(info['workers'])} workers ({busy} in use), "
          f"{info['threads']} thread(s) each; " + (f"stops after {left / 60:.1f} more idle minutes" if not busy else "busy"))
    for w in info["workers"]:
        print(f"  worker pid {w['pid']}: {'ready' if w['ready'] else 'starting'}"
              f"{', leased' if w['leased'] else ''}, {w['leases']} lease(s)")
    if info.get("refused_connections"):
        print(f"  refused connections: {info['refused_connections']} (see {folder / 'pool.log'})")
    if info.get("broken"):
        print(f"  not usable: {info['broken']}")
    return 0


def grade_limits(cell_timeout: float = 60.0, timeout: float = 600.0, memory_mb: int = 4096):
    """The limits `course grade --cell-timeout --timeout --memory` grades under (its defaults without arguments)."""
    from .sandbox import Limits
    return Limits(cell_seconds=cell_timeout, notebook_seconds=timeout, memory_bytes=memory_mb << 20,
                  cpu_seconds=int(timeout * 1.5) + 30)


def _assignments(args: argparse.Namespace) -> list[str]:
    from .gradebook import Course
    if args.all == bool(args.assignments):
        raise ValueError("name the assignment(s) to grade, e.g. `course grade 05_gradcam`, or pass --all")
    return Course.open(args.course).assignments() if args.all else args.assignments


def _summary(report) -> str:
    lines = [f"{len(report.results)} submissions graded now, {len(report.skipped)} already graded "
             f"(unchanged: submission, tests, grader and limits), in {report.seconds:.1f} s"]
    for r in sorted(report.results, key=lambda r: (r.assignment, r.student_id)):
        lines.append(f"  {r.assignment:<20} {r.student_id:<20} {r.score:g}/{r.max_score:g}  {r.status}"
                     + (f"  ({'; '.join(r.reasons)})" if r.reasons else ""))
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    from .gradebook import EXPORT_COLUMNS, Course, export_rows
    from .overview import grade_rows, note_export, write_csv
    if args.all and args.assignment:
        raise ValueError("pass either ASSIGNMENT or --all, not both")
    if args.canvas or args.moodle or args.moodle_feedback or args.moodle_id:
        return _export_for_lms(args)
    course = Course.open(args.course)
    if args.assignment:
        columns = list(EXPORT_COLUMNS)
        rows, lessons = export_rows(course, args.assignment, args.include_unreviewed), [args.assignment]
    else:
        columns, rows = grade_rows(course, include_unreviewed=args.include_unreviewed)
        lessons = columns[4:columns.index("total")]
    write_csv(args.to, columns, rows)
    note_export(course, lessons, args.to)
    print(f"wrote {len(rows)} rows to {args.to}")
    _print_held_back(course, lessons, args.include_unreviewed)
    return 0


def _lms_options(p: argparse.ArgumentParser) -> None:
    """`course export`'s LMS formats (grader/lms.py): at most one of them."""
    lms = p.add_mutually_exclusive_group()
    lms.add_argument("--canvas", type=Path, metavar="GRADEBOOK.csv",
                     help="fill the lesson columns of this Canvas gradebook export (Grades > Export); --to is the "
                          "file to import, every other cell as downloaded")
    lms.add_argument("--moodle", action="store_true",
                     help="a CSV for Moodle's Import grades > CSV file: an identifier column, one column per lesson")
    lms.add_argument("--moodle-feedback", type=Path, metavar="WORKSHEET.csv",
                     help="zip ASSIGNMENT's feedback pages for Moodle's 'Upload multiple feedback files in a zip', "
                          "participants taken from the assignment's downloaded grading worksheet")
    p.add_argument("--moodle-id", choices=("email", "idnumber", "username"),
                   help="with --moodle: the Moodle user field of the identifier column (default email; "
                        "idnumber and username take our student id)")


def _export_for_lms(args: argparse.Namespace) -> int:
    from .gradebook import Course
    from .lms import export_for_lms
    if args.moodle_id and not args.moodle:
        raise ValueError("--moodle-id goes with --moodle: `course export --moodle --moodle-id idnumber --to grades.csv`")
    if args.include_unreviewed:
        raise ValueError("--include-unreviewed is for our own CSV: an LMS file holds reviewed grades only "
                         "(review the flagged work with `course review LESSON` first)")
    course = Course.open(args.course)
    report = export_for_lms(course, args.to, lesson=args.assignment, canvas=args.canvas,
                            moodle=args.moodle, moodle_id=args.moodle_id or "email",
                            moodle_feedback=args.moodle_feedback)
    print("\n".join(report.lines()))
    _print_held_back(course, [args.assignment] if args.assignment else None, False)
    return 0


def _print_held_back(course, lessons: list[str], included: bool) -> None:
    """List what an export left out or should be read with: unreviewed, not graded, stale."""
    from .overview import held_back
    found = held_back(course, lessons)
    if found:
        print("\nread with care" + (" (unreviewed flagged scores included, marked):" if included else
                                      " (flagged scores nobody reviewed are left out):"))
        for lesson, sid, why in found:
            print(f"  {lesson:<20} {sid:<16} {why}")


def _review(args: argparse.Namespace) -> int:
    from . import review
    action = "accept" if args.accept else "zero" if args.zero else "set" if args.set is not None else None
    if action:
        if not args.student:
            raise ValueError("name the submission to decide on: --student ID")
        made = review.decide(args.course, args.lesson, args.student, action, args.set, args.note)
        print(f"{args.student} {args.lesson}: {made.describe()}")
        return 0
    items = review.queue(args.course, args.lesson, everything=True)
    if args.student:
        items = [i for i in items if i.outcome.student_id == args.student]
    if args.json:
        print(review.to_json(items))
        return 0
    if not args.list and sys.stdin.isatty() and any(i.waiting for i in items):
        return _review_at_terminal(args, [i for i in items if i.waiting])
    print("\n\n".join(review.item_text(i) for i in items) if items else f"nothing to review in {args.lesson}")
    waiting = sum(i.waiting for i in items)
    print(f"\n{waiting} waiting for a decision" + (f": decide with `course review {args.lesson} --student ID "
                                                   "--accept | --set SCORE | --zero [--note TEXT]`" if waiting else ""))
    return 0


def _review_at_terminal(args: argparse.Namespace, items: list) -> int:
    """A plain prompt per waiting submission: accept, set, zero, skip or quit."""
    from . import review
    for item in items:
        print("\n" + review.item_text(item))
        while True:
            answer = input("[a]ccept, [s]et SCORE, [z]ero, s[k]ip, [q]uit > ").strip().split(maxsplit=1)
            key, rest = (answer[0].lower(), answer[1] if len(answer) > 1 else "") if answer else ("", "")
            if key in ("k", "skip", ""):
                break
            if key in ("q", "quit"):
                return 0
            try:
                score = float(rest) if key in ("s", "set") else None
                action = {"a": "accept", "s": "set", "z": "zero"}.get(key[:1])
                if action is None or (action == "set" and score is None):
                    raise ValueError("type a, s SCORE, z, k or q")
                note = input("note (optional) > ").strip()
                made = review.decide(args.course, args.lesson, item.outcome.student_id, action, score, note)
            except ValueError as e:
                print(f"  {e}")
                continue
            print(f"  {made.describe()}")
            break
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

def _similarity(args: argparse.Namespace) -> int:
    from .similarity import DEFAULT_THRESHOLD, similarity
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    report = similarity(args.lesson, args.course, threshold=threshold, known=args.known)
    print(report.table())
    print(f"report: {report.html_path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
