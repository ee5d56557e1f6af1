"""Grade every submission of an assignment: assemble, scan, run sandboxed in parallel, score, commit.

`grade()` is what `course grade` calls. Each finished submission is committed to the gradebook at
once, so an interrupted run, started again, grades only what is left (`force=True` regrades all).
Work runs on a local pool of `Worker` processes, or on a Dask cluster (`scheduler=ADDRESS`); the
gradebook is written by this process alone, whichever runs the notebooks.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import layout
from .assemble import Assembled, UnreadableNotebook, assemble, find_notebooks, read_submission
from .examiner import SETUP_TAG, names_bound, one_mode_only, uses_examiner
from .execute import NotebookRun
from .gradebook import (Course, CourseError, ensure_assignment, fingerprint, instructor_cells, is_done, key_parts,
                        limits_fingerprint, result_key, fingerprint_of_tests, record,
                        release_notebook, submission_score)
from .sandbox import LAYERS, Limits, describe, support
from .reference import reference_flags
from .scan import scan_cells
from .score import executed, score_cells
from . import warm
from .worker import Job, LeasedWorker, Worker, WorkerDied

OPTIONAL_LAYERS = ("landlock", "mount", "pid", "network")   # what `--without` may leave out


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate student code; the message lists what is missing."""


@dataclasses.dataclass(frozen=True)
class Result:
    """One student's outcome on one assignment, as committed to the gradebook."""
    assignment: str
    student_id: str
    status: str
    score: float
    max_score: float
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass
class Report:
    """What one `grade()` call did, for the command line, the tests and the benchmark."""
    assignments: list[str]
    results: list[Result] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (assignment, student) unchanged
    seconds: float = 0.0
    workers: int = 0
    cell_seconds: float = 0.0            # time spent inside notebook cells, summed over notebooks
    notebooks: int = 0
    peak_worker_rss_bytes: int = 0       # largest worker process (imports included)
    peak_run_rss_bytes: int = 0          # largest single notebook run (its forked child)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


@dataclasses.dataclass
class _Prepared:
    assignment: str
    names: list[str]
    student: str
    print_: str
    assembled: dict[str, Assembled]
    reasons: list[str]
    flags: list[str]
    unreadable: list[str]
    setups: dict[str, list[str] | None] = dataclasses.field(default_factory=dict)   # None: tests run in-process
    parts: dict[str, str] = dataclasses.field(default_factory=dict)   # what the result's fingerprint covers


def _prepare(course: Course, assignment: str, student: str, folder: Path, names: list[str],
             releases: dict, instructors: dict, parts: dict[str, str]) -> _Prepared:
    """Read, match and re-assemble one submission's notebooks, and scan the student's code."""
    found, notes = find_notebooks(folder, names) if folder.is_dir() else ({}, [])
    prepared = _Prepared(assignment, names, student, result_key(parts), {}, list(notes), [], [], parts=parts)
    for name in names:
        if name not in found:
            prepared.reasons.append(f"no notebook {name}.ipynb was handed in")
            continue
        try:
            nb = read_submission(found[name])
        except UnreadableNotebook as e:
            prepared.unreadable.append(name)
            prepared.reasons.append(str(e))
            continue
        try:
            a = assemble(nb, releases[name], instructors[name])
            cells = {_label(a, i): a.notebook.cells[i].source for i in a.student_cells}
            flags = scan_cells(cells) + reference_flags(assignment, a)   # answers that are course_utils's
        except Exception as e:          # a notebook nbformat reads but nothing else can: this student only
            prepared.unreadable.append(name)
            prepared.reasons.append(f"{found[name].name} could not be matched to the lesson ({type(e).__name__}: {e})")
            continue
        prepared.assembled[name] = a
        prepared.reasons.extend(a.repairs)
        prepared.flags.extend(flags)
    return prepared


def _label(a: Assembled, index: int) -> str:
    meta = a.notebook.cells[index].metadata.get("nbgrader", {})
    return meta.get("grade_id") or f"#{index + 1}"


def _name_cell(a: Assembled, flag: str) -> str:
    """A tripwire flag with its cell named as the scan names cells (`cell 7: ...` -> `cell 'is_cat': ...`)."""
    head, sep, rest = flag.partition(": ")
    number = head.removeprefix("cell ")
    if sep and number.isdigit() and int(number) < len(a.notebook.cells):
        return f"cell '{_label(a, int(number))}': {rest}"
    return flag


def _job(p: _Prepared, course: Course, limits: Limits, threads: int, isolate: bool,
         without: frozenset[str], modules: tuple[str, ...] = ()) -> Job:
    """The job for a worker: each notebook's code cells, its examined test cells apart (see `Job`)."""
    notebooks, setup, tests = {}, {}, {}
    for name, a in p.assembled.items():
        examined = p.setups.get(name) is not None
        cells = [(i, c) for i, c in enumerate(a.notebook.cells) if c.cell_type == "code"]
        notebooks[name] = [(i, None if examined and _is_test(c) else c.source) for i, c in cells]
        if examined:
            setup[name] = p.setups[name]
            tests[name] = [(i, _label(a, i), c.source) for i, c in cells if _is_test(c)]
    return Job(key=f"{p.assignment}/{p.student}", notebooks=notebooks, course_dir=str(course.root), limits=limits,
               threads=threads, isolate=isolate, without=tuple(sorted(without)), setup=setup, tests=tests,
               warm=modules)


def _commit(course: Course, p: _Prepared, runs: dict[str, NotebookRun] | None, failure: str | None) -> Result:
    """Score the runs and write the student's result (the only place results are written)."""
    reasons = list(p.reasons)
    notebooks: dict = {name: None for name in p.names}
    cells: dict = {}
    if failure:
        reasons.append(failure)
    flags = list(p.flags)
    for name, run in (runs or {}).items():
        nb = executed(p.assembled[name].notebook, run)
        notebooks[name] = nb
        reasons.extend(run.events)
        flags.extend(_name_cell(p.assembled[name], f) for f in run.flags)
        for c in score_cells(nb):
            cells[c.grade_id] = [c.score, c.max_score, c.reason]
    if failure or (not p.assembled and p.unreadable):
        status = "failed"
    elif not p.assembled:
        status = "missing"
    elif flags:
        status = "flagged"
        reasons.extend(f"flagged for review: {f}" for f in flags)
    else:
        status = "graded"
    record(course, p.assignment, p.student, notebooks, status, reasons, p.print_, cells, p.parts)
    score, max_score = submission_score(course, p.assignment, p.student)
    return Result(p.assignment, p.student, status, score, max_score, tuple(reasons))


def _commit_or_fail(course: Course, p: _Prepared, runs: dict[str, NotebookRun] | None,
                    failure: str | None) -> Result:
    """Commit; if the outputs cannot be scored or saved, record the student as failed instead."""
    try:
        return _commit(course, p, runs, failure)
    except Exception as e:
        return _commit(course, p, None, f"the grader could not score or save this submission ({type(e).__name__}: {e})")


def ensure_default_model(log: Callable[[str], None] = print) -> None:
    """Train the course's default model once, outside the sandbox, if no notebook could load it.

    Finding out imports torch (3 s), so the answer is remembered in the instructor's private pool
    folder, keyed by this environment and code (`pool.environment_key`) and the cache folder: a later
    call only checks that the weights file is still there."""
    from . import pool
    try:
        memo = pool.private_dir(pool.pool_dir()) / "default-model.json"
    except (pool.PoolError, OSError):
        memo = None
    key = f"{pool.environment_key()}:{layout.cache_dir()}"
    try:
        known = json.loads(memo.read_text()) if memo else {}
        if known.get("key") == key and Path(known["file"]).is_file():
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    code = ("from course_utils.model import get_learner, model_cache_file, train_config;"
            "f = model_cache_file(train_config());"
            "f.exists() or (print('training the default model once (about 40 s)', flush=True), get_learner(online=False));"
            "print(f'model: {f}')")
    env = {**os.environ, "PYTHONPATH": layout.python_path(os.environ.get("PYTHONPATH"))}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    said = [line for line in lines if not line.startswith("model: ")]
    if said:
        log("\n".join(said))
    if done.returncode:
        raise RuntimeError(f"could not prepare the default model:\n{done.stderr[-2000:]}")
    files = [line.removeprefix("model: ") for line in lines if line.startswith("model: ")]
    if memo and files:
        memo.write_text(json.dumps({"key": key, "file": files[-1]}))


def grade(assignments: str | Sequence[str], course_dir: str | os.PathLike = ".", *,
          workers: int | None = None, force: bool = False, scheduler: str | None = None, isolate: bool = True,
          limits: Limits = Limits(), progress: bool = True, log: Callable[[str], None] = print,
          without: Sequence[str] = (), students: Sequence[str] | None = None,
          pool: bool | None = False, pool_idle: float | None = None) -> Report:
    """Grade every submission of one or more assignments in `course_dir`; see the module docstring.

    A submission is graded again when its result is stale: the submission, the lesson's released
    tests, the grader's version or the limits changed since (one fingerprint covers all four), or
    with `force`; `students` grades only those students, whatever their results say.
    Several assignments share one pool of workers, so the imports are paid once per worker per run;
    a worker imports what the assignments' notebooks import (`grader.warm`), and starts while the
    submissions are read. `pool=None` leases the workers from the instructor's warm pool
    (`grader.pool`) unless course.toml or $COURSE_POOL turn it off (`course grade` does that); True
    uses it, False (the default) starts workers for this call only. `pool_idle` (minutes) is how
    long a pool started now stays when idle. The pool is never used without the sandbox.
    The sandbox's layers are printed once (through `log`); a layer this machine cannot give stops the
    run with SandboxUnavailable unless it is named in `without` (`course grade --without LAYER`).
    """
    assignments = [assignments] if isinstance(assignments, str) else list(assignments)
    if not assignments:
        raise ValueError("name at least one assignment (a folder name in source/, e.g. 05_gradcam)")
    for assignment in assignments:
        if not assignment or "/" in assignment or assignment.startswith("."):
            raise ValueError(f"'{assignment}' is not an assignment name (a folder name in source/, e.g. 05_gradcam)")
    if workers is not None and workers < 1:
        raise ValueError("--workers must be at least 1")
    without = frozenset(without)
    if unknown := without - set(OPTIONAL_LAYERS):
        raise ValueError(f"--without takes {', '.join(OPTIONAL_LAYERS)}, not {', '.join(sorted(unknown))}")
    if isolate:
        problems = support(without)
        log("sandbox layers on this machine:\n" + describe(problems, without))
        if missing := [f"{layer}: {problems[layer]}" for layer in LAYERS if problems[layer] and layer not in without]:
            optional = [m.split(":")[0] for m in missing if m.split(":")[0] in OPTIONAL_LAYERS]
            fix = (f"Fix that, or pass {' '.join('--without ' + o for o in optional)} to grade with less isolation"
                   if len(optional) == len(missing) else "Fix that (this layer cannot be left out)")
            raise SandboxUnavailable("cannot isolate student notebooks on this machine; missing: "
                                     + "; ".join(missing) + f". {fix}, or pass --no-sandbox to run untrusted "
                                     "code unconfined.")
    else:
        log("sandbox: OFF (--no-sandbox): student code runs unconfined, with only per-process limits")
    start = time.monotonic()
    course = Course.open(course_dir)
    from . import pool as warm_pool
    choice = warm_pool.settings(course.root, pool, pool_idle)
    modules = warm.modules_for([_lesson_folder(course, a) for a in assignments], choice.warm)
    report = Report(assignments)
    only = None if students is None else set(students)
    n_workers = workers or os.cpu_count() or 1
    threads = 1 if scheduler else _threads(n_workers)
    to_prepare = [t for a in assignments for t in _todo(course, a, force, report, limits, only, log)]
    # the workers start (and import) now, while the submissions are read, checked and re-assembled
    local = None if scheduler or not to_prepare else _WorkerPool(
        min(n_workers, len(to_prepare)), _worker_factory(choice, isolate, n_workers, threads, limits, modules, log))
    bar = None
    try:
        todo = [prepare() for prepare in to_prepare]
        uses_model = any(m == "course_utils" or m.startswith("course_utils.") for m in modules)
        model = _in_background(ensure_default_model, log) if uses_model and any(p.assembled for p in todo) else None
        runnable = [p for p in todo if p.assembled]
        bar = _progress(len(todo), progress,
                        ", ".join(assignments) if len(assignments) < 3 else f"{len(assignments)} lessons")
        for p in todo:
            if not p.assembled:                      # nothing to run: missing or unreadable
                report.results.append(_commit(course, p, None, None))
                bar.update(report)
        jobs = [_job(p, course, limits, threads, isolate, without, modules) for p in runnable]
        by_key = {job.key: p for job, p in zip(jobs, runnable)}
        ready = model.result if model else (lambda: None)
        run_all = _run_dask(scheduler, ready, threads, modules) if scheduler else _run_local(local, ready)
        report.workers = 1 if scheduler else min(n_workers, max(1, len(jobs)))
        for key, runs, failure, rss in run_all(jobs):
            report.peak_worker_rss_bytes = max(report.peak_worker_rss_bytes, rss)
            for run in (runs or {}).values():
                report.cell_seconds += sum(run.seconds.values())
                report.notebooks += 1
                report.peak_run_rss_bytes = max(report.peak_run_rss_bytes, run.max_rss_bytes)
            report.results.append(_commit_or_fail(course, by_key[key], runs, failure))
            bar.update(report)
    finally:
        if bar is not None:
            bar.close()
        if local is not None:
            local.close()
    report.seconds = time.monotonic() - start
    return report


def _lesson_folder(course: Course, assignment: str) -> Path:
    """Where the lesson's notebooks are read for their imports: the source, else the release."""
    source = course.root / course.source / assignment
    return source if source.is_dir() else course.root / course.release / assignment


def prestart_pool(course_dir: str | os.PathLike, assignments: Sequence[str], limits: Limits,
                  workers: int | None = None, log: Callable[[str], None] = print) -> Path | None:
    """Start the warm pool a plain `course grade ASSIGNMENTS` would lease from, without waiting for its
    workers (`course collect` calls this: they import while the instructor is still collecting).
    Returns its folder, or None when the pool is off or cannot be had (said through `log`)."""
    from . import pool as warm_pool
    course = Course.open(course_dir)
    choice = warm_pool.settings(course.root)
    if not choice.enabled:
        return None
    n_workers = workers or os.cpu_count() or 1
    modules = warm.modules_for([_lesson_folder(course, a) for a in assignments], choice.warm)
    try:
        return _pool_for(choice, n_workers, _threads(n_workers), limits, modules, log)
    except (warm_pool.PoolError, OSError) as e:
        log(f"warm pool: not started ({e})")
        return None


def _threads(n_workers: int) -> int:
    """Torch threads per local worker: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // n_workers)


def _pool_for(choice, n_workers: int, threads: int, limits: Limits, modules: tuple[str, ...],
              log: Callable[[str], None]) -> Path:
    """The folder of the warm pool for these settings (started, or replaced, if need be)."""
    from . import pool as warm_pool
    key = warm_pool.pool_key(n_workers, threads, limits_fingerprint(limits))
    return warm_pool.ensure_pool(key, n_workers, threads, modules, choice.idle_minutes, log)


def _worker_factory(choice, isolate: bool, n_workers: int, threads: int, limits: Limits,
                    modules: tuple[str, ...], log: Callable[[str], None]) -> Callable[[], Worker]:
    """How the call gets each worker: leased from the warm pool (`choice.enabled`, sandboxed runs only),
    else a process of its own. A pool that cannot be had is said once, and the call goes on without."""
    from . import pool as warm_pool
    if choice.enabled and isolate:
        try:
            folder = _pool_for(choice, n_workers, threads, limits, modules, log)
            return lambda: LeasedWorker(folder, threads=threads, warm_modules=modules, log=log)
        except (warm_pool.PoolError, OSError) as e:
            log(f"warm pool: not used ({e}); this call starts its own workers")
    return lambda: Worker(threads=threads, warm_modules=modules)


def _todo(course: Course, assignment: str, force: bool, report: Report, limits: Limits,
          only: set[str] | None = None, log: Callable[[str], None] = print) -> list[Callable[[], _Prepared]]:
    """The assignment's submissions that need grading, each as the call that prepares it (read, match,
    re-assemble, scan); the unchanged ones go to `report.skipped`."""
    names = ensure_assignment(course, assignment)
    releases = {n: release_notebook(course, assignment, n) for n in names}
    instructors = {n: instructor_cells(course, assignment, n) for n in names}
    for name in names:
        if changed := unreleased_test_changes(course, assignment, name, instructors[name]):
            log(f"warning: {assignment}/{name}.ipynb: the source's test cells differ from the released ones "
                f"({', '.join(changed)}); grading uses the released tests. Run `course release {assignment}` "
                "to grade with the source's.")
    setups = {n: exam_setup(course, assignment, n, releases[n], instructors[n]) for n in names}
    tests, limits_text = fingerprint_of_tests(course, assignment), limits_fingerprint(limits)
    submissions = course.submissions(assignment)
    if only is not None:
        if unknown := sorted(only - set(submissions)):
            raise CourseError(f"{assignment}: no submission folder for {', '.join(unknown)} in "
                              f"{course.submitted}/: check the student id (`course status` lists them)")
        submissions = {s: f for s, f in submissions.items() if s in only}
    todo = []
    for student, folder in submissions.items():
        parts = key_parts(fingerprint(folder), tests, limits_text)
        if not force and only is None and is_done(course, assignment, student, result_key(parts)):
            report.skipped.append((assignment, student))
            continue
        todo.append(functools.partial(_prepared, course, assignment, student, folder, names, releases, instructors,
                                      parts, setups))
    return todo


def _prepared(course: Course, assignment: str, student: str, folder: Path, names: list[str], releases: dict,
              instructors: dict, parts: dict[str, str], setups: dict) -> _Prepared:
    p = _prepare(course, assignment, student, folder, names, releases, instructors, parts)
    p.setups = setups
    p.reasons.extend(IN_PROCESS for n in p.assembled if setups[n] is None)
    return p


IN_PROCESS = ("graded in-process: this notebook's test cells are not written for the examiner, so they ran "
              "in the student's own process, as in plain nbgrader")


def exam_setup(course: Course, assignment: str, name: str, release, instructor: dict) -> list[str] | None:
    """The setup cells the examiner starts a notebook's tests from, or None if its tests run in-process.

    A notebook whose test cells use `examine(...)` is graded by the examiner; then every test cell
    must work there, or grading stops naming the cell (a test that only works in one mode would
    grade differently under Validate and under `course grade`). Test cells come from the gradebook
    (hidden tests included), a setup cell that is an exercise from the source notebook (its answer).
    """
    tests = [(c.metadata["nbgrader"]["grade_id"], instructor[c.metadata["nbgrader"]["grade_id"]].source)
             for c in release.cells if c.cell_type == "code" and _is_test(c)
             and c.metadata["nbgrader"].get("grade_id") in instructor]
    if not any(uses_examiner(source) for _, source in tests):
        return None
    code = [c for c in release.cells if c.cell_type == "code"]
    answers = _source_answers(course, assignment, name)
    setup = [_setup_source(c, answers, f"{assignment}/{name}.ipynb") for c in code
             if SETUP_TAG in c.metadata.get("tags", [])]
    others = [c.source for c in code if SETUP_TAG not in c.metadata.get("tags", []) and not _is_test(c)]
    setup_names, notebook_names = names_bound(setup), names_bound(others)
    for grade_id, source in tests:
        if why := one_mode_only(source, setup_names, notebook_names):
            raise CourseError(f"{assignment}/{name}.ipynb: test cell {grade_id} only works in one mode: {why}. "
                              "Fix it in the source notebook and release the lesson again.")
    return setup


def unreleased_test_changes(course: Course, assignment: str, name: str, instructor: dict) -> list[str]:
    """The test cells (grade ids) whose source notebook differs from the released gradebook copy."""
    import nbformat
    path = course.root / course.source / assignment / f"{name}.ipynb"
    if not path.is_file():
        return []
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(path, as_version=4).cells
             if _is_test(c) and c.metadata["nbgrader"].get("grade_id")}
    return sorted(g for g, source in cells.items() if source != getattr(instructor.get(g), "source", None))


def _source_answers(course: Course, assignment: str, name: str) -> dict[str, str]:
    """grade_id -> source of the solution cells of the instructor's source notebook (the gradebook keeps stubs)."""
    import nbformat
    path = course.root / course.source / assignment / f"{name}.ipynb"
    if not path.is_file():
        return {}
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.metadata["nbgrader"].get("grade_id")}


def _setup_source(cell, answers: dict[str, str], where: str) -> str:
    """A setup cell's code as the instructor wrote it: an exercise's answer comes from the source notebook."""
    meta = cell.metadata.get("nbgrader", {})
    if not meta.get("solution"):
        return cell.source
    if meta.get("grade_id") not in answers:
        raise CourseError(f"{where}: setup cell {meta.get('grade_id')} is an exercise, and the course's source "
                          "notebook has no answer for it: restore the source notebook or untag the cell")
    return answers[meta["grade_id"]]


def _is_test(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution")


def _in_background(fn: Callable, *args) -> Future:
    """Start `fn(*args)` on a thread of its own; the Future's `result()` waits for it and re-raises its error."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="course-grade-model")
    future = executor.submit(fn, *args)
    executor.shutdown(wait=False)                 # nothing else will run there: the thread ends with fn
    return future


class _WorkerPool:
    """Threads that each own one `Worker` process; `submit(job)` gives a Future of (key, runs, failure, rss).

    The workers start (and pay their imports) as soon as the pool exists. `close()` (leaving the `with`
    block) cancels the jobs not started and closes the workers, so running jobs end at once.
    """

    def __init__(self, size: int, make_worker: Callable[[], Worker]):
        self._owned = threading.local()
        self._workers: list[Worker] = []
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="course-grade-worker",
                                            initializer=self._own_worker, initargs=(make_worker,))
        # No thread is idle yet, so each submit starts one: every worker starts now, not at its first job.
        self._futures = [self._executor.submit(self._start) for _ in range(size)]

    def _own_worker(self, make_worker: Callable[[], Worker]) -> None:
        """Once in each pool thread, before its first task: the Worker it uses for every job."""
        self._owned.worker = make_worker()
        self._workers.append(self._owned.worker)

    def _start(self) -> None:
        """Start this thread's worker now, so that its imports overlap whatever the caller does next."""
        try:
            self._owned.worker.start()
        except WorkerDied:
            pass                                  # its first run() retries and reports the failure per job

    def submit(self, job: Job) -> Future:
        """Queue one job for the next free worker."""
        future = self._executor.submit(self._run, job)
        self._futures.append(future)
        return future

    def _run(self, job: Job) -> tuple:
        """Run one job on this thread's worker; every failure becomes the job's failure string."""
        worker = self._owned.worker
        try:
            return job.key, worker.run(job), None, worker.peak_rss_bytes
        except WorkerDied as e:
            return job.key, None, str(e), worker.peak_rss_bytes
        except BaseException as e:                # never lose a job silently
            return job.key, None, f"the grader failed on this submission: {e!r}", 0

    def close(self) -> None:
        """Cancel the jobs not started, then close the workers until no job runs (idempotent).

        Closing a busy worker ends its job (WorkerDied); a worker restarted meanwhile is closed next
        round. The threads end last: a worker gets SIGKILL when the thread that started it ends
        (PR_SET_PDEATHSIG follows the thread), which would leave its scratch folder behind.
        """
        for future in self._futures:
            future.cancel()                                          # only the ones not started
        while running := [f for f in self._futures if not f.done()]:   # done() counts the cancelled, wait() not
            _close_all(self._workers)
            wait(running, timeout=1)
        _close_all(self._workers)
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "_WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_all(workers: list[Worker]) -> None:
    """Close the workers side by side: a busy one may take seconds to stop."""
    with ThreadPoolExecutor(max(1, len(workers)), thread_name_prefix="course-grade-close") as closing:
        list(closing.map(lambda worker: worker.close(), list(workers)))


def _run_local(pool: "_WorkerPool | None", ready: Callable[[], None]):
    """Run jobs on the call's workers (started already); yields (key, runs, failure, worker rss) as they
    finish. The workers paid their imports while the submissions were read and `ready()` prepared the model."""
    def run_all(jobs: list[Job]) -> Iterator:
        if not jobs or pool is None:
            return
        ready()
        for done in as_completed([pool.submit(job) for job in jobs]):
            yield done.result()
    return run_all


def _run_dask(address: str, ready: Callable[[], None], threads: int = 1, modules: tuple[str, ...] = warm.BASE):
    """Run jobs as Dask tasks on the cluster at `address`; the gradebook stays with this process.
    Each Dask worker keeps one warm grading worker (`WarmWorkerPlugin`), paid once, not once per call."""
    def run_all(jobs: list[Job]) -> Iterator:
        from distributed import Client, as_completed
        from .on_dask import WarmWorkerPlugin
        from .worker import run_on_this_machine
        with Client(address, timeout=30) as client:
            client.register_plugin(WarmWorkerPlugin(threads, modules))   # warms while the model is prepared
            ready()
            futures = {client.submit(run_on_this_machine, job.to_json(), job.tests_json(), pure=False,
                                     key=f"course-grade-{job.key}-{time.time_ns()}"): job.key for job in jobs}
            for future in as_completed(futures):
                key = futures[future]
                try:
                    answer = future.result()
                    runs = {k: NotebookRun.from_json(v) for k, v in answer["notebooks"].items()}
                    yield key, runs, None, int(answer.get("peak_rss_bytes", 0))
                except Exception as e:
                    yield key, None, f"the Dask worker failed on this submission: {e}", 0
    return run_all


class _progress:
    """A tqdm bar: done / flagged / failed / left (silent when progress=False)."""

    def __init__(self, total: int, show: bool, assignment: str):
        from tqdm.auto import tqdm
        self.total = total
        self.bar = tqdm(total=total, desc=f"grading {assignment}", unit="student", disable=not show,
                        file=sys.stderr, dynamic_ncols=True)

    def update(self, report: Report) -> None:
        self.bar.update(1)
        self.bar.set_postfix(done=len(report.results), flagged=report.count("flagged"),
                             failed=report.count("failed"), left=self.total - len(report.results))

    def close(self) -> None:
        self.bar.close()
