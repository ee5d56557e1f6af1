"""A grading worker: one long-lived process that imports what the lessons use once (`warm`), then
runs each notebook it is sent in a fresh sandboxed fork (`execute.run_notebook`).

`Worker` is the handle the grader holds (locally, one per `--workers`; leased from the instructor's
warm pool, `pool`; on Dask, one per Dask worker process, see `WarmWorkerPlugin`). Requests and
answers are length-prefixed JSON on the worker's stdin and stdout; everything else the worker prints
goes to its stderr. Each job is a control frame the worker itself reads (`{"warm": [modules]}`: it
imports those it lacks, and so does its examiner), then the job, which a fork reads.

The worker starts with an environment built from an allow-list (never the instructor's: a forked
notebook can read what its process started with) and no current folder on `sys.path`. Each job is
read and run by a fork of the warm worker, so no job's data (another student's notebook) is in the
memory a later student's run is forked from.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from . import warm
from .examiner import Examiner
from .execute import Exam, NotebookRun, receive, run_notebook, send
from .protocol import ready_to_read
from .sandbox import ENV_ALLOWED, Limits

MAX_ANSWER_BYTES = 1 << 30
MAX_CONTROL_BYTES = 1 << 20


class WorkerDied(RuntimeError):
    """The worker process ended or stopped answering; the job it had was not graded."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One submission's notebooks to run: name -> [(cell index, source)], plus how to run them.

    A cell whose source is None is a test cell the examiner runs: its source is in `tests`
    (name -> [(index, label, source)]) and `setup` (name -> the lesson's setup cells, the
    instructor's) is where its tests start from; both travel in a frame of their own after the
    job's (`tests_json`), which only the examiner reads.
    """
    key: str
    notebooks: dict[str, list[tuple[int, str | None]]]
    course_dir: str
    limits: Limits = Limits()
    threads: int = 1
    isolate: bool = True
    without: tuple[str, ...] = ()          # sandbox layers the instructor chose to do without
    setup: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    tests: dict[str, list[tuple[int, str, str]]] = dataclasses.field(default_factory=dict)
    warm: tuple[str, ...] = ()             # modules the worker imports before it (`grader.warm`)

    def to_json(self) -> dict:
        """Everything but what only the examiner may read (see `tests_json`)."""
        data = {**dataclasses.asdict(self), "limits": dataclasses.asdict(self.limits)}
        del data["tests"], data["setup"]
        return data

    def tests_json(self) -> dict:
        """The examined test cells and the setup they start from (the instructor's code, answers included)."""
        return {"tests": {name: [list(t) for t in cells] for name, cells in self.tests.items()},
                "setup": self.setup}

    @classmethod
    def from_json(cls, data: dict, exam: dict | None = None) -> "Job":
        exam = exam or {}
        return cls(key=data["key"], course_dir=data["course_dir"], threads=int(data["threads"]),
                   isolate=bool(data["isolate"]), limits=Limits(**data["limits"]),
                   without=tuple(str(w) for w in data.get("without", ())),
                   notebooks={k: [(int(i), None if s is None else str(s)) for i, s in v]
                              for k, v in data["notebooks"].items()},
                   setup={k: [str(s) for s in v] for k, v in exam.get("setup", {}).items()},
                   tests={k: [(int(i), str(g), str(s)) for i, g, s in v] for k, v in exam.get("tests", {}).items()},
                   warm=warm.checked(data.get("warm", ())))

    def examined(self) -> bool:
        """Whether the examiner runs some of this job's test cells."""
        return any(source is None for cells in self.notebooks.values() for _, source in cells)

    def budget(self) -> float:
        """Seconds after which the worker itself is presumed stuck."""
        return len(self.notebooks) * (self.limits.notebook_seconds + 60) + 60


def serve(inp: int, out: int) -> None:
    """The worker's loop: for each job, import what its control frame names, then a fork of this warm
    process reads the job, runs it and answers."""
    scratch = tempfile.mkdtemp(prefix="course-grade-")
    os.chmod(scratch, 0o700)
    examiner = Examiner.start(inp)           # before any job: it never shares memory with a student's run
    try:
        while True:
            try:
                control = receive(inp, time.monotonic() + 10 ** 9, MAX_CONTROL_BYTES)
                if control is None:
                    return
                _warm(control.get("warm", ()), examiner)
            except ValueError as e:           # the stream is out of step: nothing after this can be trusted
                send(out, {"failed": f"the worker could not read a job's control frame ({e})"})
                return
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _die_with_parent()
                    code = _serve_one(inp, out, scratch, examiner)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code == 3:                                   # end of input
                return
            if code != 0:
                send(out, {"failed": f"the job process ended with {code}"})
    finally:
        examiner.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _serve_one(inp: int, out: int, scratch: str, examiner: Examiner) -> int:
    """In the job's fork: read one job, run its notebooks, answer. 3 at end of input."""
    from .sandbox import readable_paths
    request = receive(inp, time.monotonic() + 10 ** 9, MAX_ANSWER_BYTES)
    if request is None:
        return 3
    job = Job.from_json(request)
    readable = readable_paths(job.course_dir)
    if job.examined():
        # the examiner reads the test cells (the next frame) itself: this process, which every run
        # of the student's notebook is forked from, never holds them
        examiner.read_job()
    try:
        runs = {name: run_notebook(cells, readable, job.limits, scratch, job.threads, job.isolate,
                                   frozenset(job.without), _exam(examiner, name, cells)).to_json()
                for name, cells in job.notebooks.items()}
    finally:
        if job.examined():
            examiner.end_job()
    send(out, {"key": job.key, "notebooks": runs, "worker_rss_bytes": _rss()})
    return 0


_warmed: set[str] = set()


def _warm(names, examiner: Examiner) -> None:
    """Import the modules not imported yet, here and in the examiner (`grader.warm`)."""
    todo = [n for n in warm.checked(names) if n not in _warmed]
    if todo:
        warm.import_all(todo)
        try:
            examiner.warm(todo)
        except (OSError, RuntimeError):    # an examiner that ended fails the job's tests, as it always did
            pass
        _warmed.update(todo)


def _exam(examiner: Examiner, name: str, cells: list) -> Exam | None:
    tests = frozenset(i for i, source in cells if source is None)
    return Exam(examiner, name, tests) if tests else None


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: this process gets SIGKILL when its parent ends (the grader, or the worker)."""
    import ctypes
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker process (`python -m grader.worker [--warm a,b,c]`)."""
    _die_with_parent()
    answer = os.dup(1)
    os.dup2(2, 1)                                  # stray prints must not corrupt the answers
    argv = sys.argv[1:] if argv is None else argv
    names = warm.checked(argv[1].split(",") if argv[:1] == ["--warm"] and argv[1:2] and argv[1] else warm.BASE)
    failed = warm.import_all(names)
    _warmed.update(names)
    send(answer, {"ready": True, "warm": list(names), "failed": failed})
    serve(0, answer)


class Worker:
    """Handle on one worker process: `run(job)` sends it a submission and returns the runs."""

    def __init__(self, threads: int = 1, log: Path | None = None, warm_modules: tuple[str, ...] = warm.BASE):
        self.threads = threads
        self.warm_modules = warm.checked(warm_modules)
        self._log = log
        self._proc: subprocess.Popen | None = None
        self.peak_rss_bytes = 0

    def start(self) -> None:
        """Start the worker process now (otherwise the first `run` does); raises WorkerDied."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()

    def _start(self) -> None:
        err = open(self._log, "ab") if self._log else subprocess.DEVNULL
        home = Path.home()
        self._proc = subprocess.Popen([sys.executable, "-P", "-m", "grader.worker", "--warm", ",".join(self.warm_modules)],
                                      env=worker_environment(self.threads), cwd=str(home if home.is_dir() else "/"),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        if self._log:
            err.close()
        ready = receive(self._proc.stdout.fileno(), time.monotonic() + 300, 1 << 16)
        if not ready or not ready.get("ready"):
            self.close()
            raise WorkerDied("the grading worker did not start (see its log)")

    def _fds(self) -> tuple[int, int]:
        """Where jobs go and answers come from: the worker process's stdin and stdout."""
        return self._proc.stdin.fileno(), self._proc.stdout.fileno()

    def run(self, job: Job) -> dict[str, NotebookRun]:
        """Run one job; raises WorkerDied (and restarts on the next call) if the worker fails."""
        self.start()
        to, back = self._fds()
        try:
            send(to, {"warm": list(job.warm)})
            send(to, job.to_json())
            if job.examined():
                send(to, job.tests_json())
            answer = receive(back, time.monotonic() + job.budget(), MAX_ANSWER_BYTES)
        except (OSError, TimeoutError, ValueError) as e:
            self.close()
            raise WorkerDied(f"the grading worker failed on this submission: {e}") from e
        if answer is not None and "failed" in answer:
            raise WorkerDied(f"the grading worker failed on this submission ({answer['failed']})")
        if answer is None or answer.get("key") != job.key:
            self.close()
            raise WorkerDied("the grading worker ended before answering")
        self.peak_rss_bytes = max(self.peak_rss_bytes, int(answer.get("worker_rss_bytes", 0)))
        return {name: NotebookRun.from_json(run) for name, run in answer["notebooks"].items()}

    def close(self) -> None:
        """Stop the worker process (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LeasedWorker(Worker):
    """A worker leased from the instructor's warm pool (`grader.pool`), spoken to like an own one.

    `close()` gives it back: cleanly when no job is in flight, otherwise the pool kills and replaces it
    (which also ends the job). If the pool cannot give a worker, this one starts its own process
    instead, so a job is never lost to the pool."""

    def __init__(self, folder: Path, threads: int = 1, warm_modules: tuple[str, ...] = warm.BASE,
                 log: Callable[[str], None] = lambda m: None):
        super().__init__(threads=threads, warm_modules=warm_modules)
        self._folder, self._say = folder, log
        self._lease = None
        self._busy = False
        self._own = False
        self._orphan = None
        self._state = threading.Lock()

    def start(self) -> None:
        """Hold a live leased worker (a new lease if the one held has ended), else start an own one."""
        if self._own:
            return super().start()
        from .pool import Lease, PoolError
        for _ in range(3):
            if self._lease is not None and not ready_to_read([self._lease.from_worker], 0):
                return                   # an idle worker says nothing: readable means it ended
            if self._lease is not None:
                self.close()             # the pool sees it dead and replaces it
            try:
                self._lease = Lease(self._folder)
            except (PoolError, OSError, ValueError) as e:
                self._say(f"warm pool: no worker from it ({e}); starting one for this call")
                break
        else:
            self._say("warm pool: its workers keep ending; starting one for this call")
        if self._lease is not None:
            self.close()
        self._own = True
        super().start()

    def _fds(self) -> tuple[int, int]:
        if self._own:
            return super()._fds()
        return self._lease.to_worker, self._lease.from_worker

    def run(self, job: Job) -> dict[str, NotebookRun]:
        with self._state:
            self._busy = True
        try:
            return super().run(job)      # a failure in there closes (while busy: the pool replaces the worker)
        finally:
            with self._state:
                self._busy = False
                orphan, self._orphan = self._orphan, None
            if orphan is not None:       # given back while this job was reading it: its pipes are ours to close
                orphan.close_pipes()

    def close(self) -> None:
        if self._own:
            return super().close()
        with self._state:
            lease, busy = self._lease, self._busy
            self._lease = None
            if busy:
                self._orphan = lease
        if lease is None:
            return
        lease.release(clean=not busy)    # busy: the pool kills the worker, and the job reading it ends
        if not busy:
            lease.close_pipes()


def worker_environment(threads: int) -> dict[str, str]:
    """The worker's whole environment: allow-listed names only, never the instructor's secrets."""
    from . import layout
    env = {k: v for k, v in os.environ.items() if (k in ENV_ALLOWED or k.startswith("LC_"))
           and k not in ("PYTHONPATH", "COURSE_ONLINE")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=layout.python_path(),
               COURSE_CACHE=str(layout.cache_dir()), PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    return env


_local: dict[int, Worker] = {}
_local_lock = threading.Lock()
_starter = None                 # one long-lived thread starts this machine's workers (see `warm_here`)


def warm_here(threads: int, modules: tuple[str, ...] = warm.BASE) -> Worker:
    """This machine's grading worker for `threads`, started (with `modules` warm) if it is not running.

    Started from one thread that lives as long as this process: a worker is killed when the thread
    that started it ends (PR_SET_PDEATHSIG follows the thread), and a Dask plugin's or task's thread
    may not live that long."""
    global _starter
    from concurrent.futures import ThreadPoolExecutor
    with _local_lock:
        worker = _local.get(threads)
        if worker is None:
            worker = _local[threads] = Worker(threads=threads, warm_modules=modules)
        if _starter is None:
            _starter = ThreadPoolExecutor(1, thread_name_prefix="course-grade-starter")
        _starter.submit(worker.start).result()
    return worker


def run_on_this_machine(job_json: dict, tests_json: dict | None = None) -> dict:
    """A Dask task: run the job on this machine's warm worker process (`warm_here`)."""
    job = Job.from_json(job_json, tests_json)
    worker = warm_here(job.threads, job.warm or warm.BASE)
    with _local_lock:
        runs = worker.run(job)
        return {"notebooks": {k: v.to_json() for k, v in runs.items()}, "peak_rss_bytes": worker.peak_rss_bytes}


if __name__ == "__main__":
    main()
