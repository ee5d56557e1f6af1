"""Run one notebook's code cells in a sandboxed child forked from an already-importing worker.

The worker has imported torch, fastai and course_utils once (and run no torch operation, so the
fork is safe); each notebook gets a fresh run started by `sandbox.start` (its own namespaces, root,
uid and limits) that runs the cells in an IPython shell (execnb's `CaptureShell`) and streams every
cell's outputs back through a pipe of that run alone as soon as the cell ends. A cell that times
out, or a run that dies (`os._exit`, a kill, a limit), costs only that cell: the notebook is run
again in a new sandbox with that cell replaced by an error, and every cell it did not reach is
marked as not run when time is up. A run stopped by a limit says which limit and at what figure.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

from . import sandbox, tripwire
from .protocol import ready_to_read
from .examiner import Examiner
from .sandbox import Limits, Policy

MAX_ATTEMPTS = 4                    # a notebook is re-run at most this often after a lost cell
REPORT_GRACE = 10.0                 # seconds the child may take beyond a cell's limit to report it
_HEADER = struct.Struct("!Q")


# ----------------------------------------------------------------------------- framing
def send(fd: int, message: dict) -> None:
    """Write one length-prefixed JSON message to a file descriptor."""
    data = json.dumps(message).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int, deadline: float, max_bytes: int) -> dict | None:
    """Read one message; None at end of stream. Raises TimeoutError or ValueError (malformed)."""
    header = _read_exactly(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > max_bytes:
        raise ValueError(f"a message of {size} bytes is larger than the {max_bytes} allowed")
    body = _read_exactly(fd, size, deadline)
    if body is None:
        raise ValueError("the stream ended inside a message")
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a message is not a JSON object")
    return message


def _read_exactly(fd: int, n: int, deadline: float) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not ready_to_read([fd], left):
            raise TimeoutError("no message before the deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got:
                raise ValueError("the stream ended inside a message")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass
class NotebookRun:
    """Outputs of every code cell (by index in the notebook) and what happened on the way."""
    outputs: dict[int, list] = dataclasses.field(default_factory=dict)
    seconds: dict[int, float] = dataclasses.field(default_factory=dict)
    events: list[str] = dataclasses.field(default_factory=list)   # plain-language reasons
    flags: list[str] = dataclasses.field(default_factory=list)    # the tripwire's, for review (grader.tripwire)
    attempts: int = 0
    wall_seconds: float = 0.0
    max_rss_bytes: int = 0              # the largest memory all the run's processes held together
    peak_processes: int = 0

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "outputs": {str(k): v for k, v in self.outputs.items()},
                "seconds": {str(k): v for k, v in self.seconds.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "NotebookRun":
        return cls(outputs={int(k): v for k, v in data["outputs"].items()},
                   seconds={int(k): float(v) for k, v in data["seconds"].items()},
                   events=[str(e) for e in data["events"]], attempts=int(data["attempts"]),
                   wall_seconds=float(data["wall_seconds"]), max_rss_bytes=int(data["max_rss_bytes"]),
                   peak_processes=int(data.get("peak_processes", 0)),
                   flags=[str(f) for f in data.get("flags", [])])


def error_output(ename: str, message: str) -> dict:
    """An nbformat error output (nbgrader scores a test cell with one as 0)."""
    return {"output_type": "error", "ename": ename, "evalue": message, "traceback": [f"{ename}: {message}"]}


def cap_outputs(outputs: list, max_bytes: int) -> list:
    """Keep a cell's outputs within max_bytes; what is cut is said in a final stream of the same kind."""
    kept, used, dropped = [], 0, 0
    for out in outputs:
        size = len(json.dumps(out))
        if used + size <= max_bytes:
            kept.append(out)
            used += size
        elif out.get("output_type") == "stream" and used < max_bytes:
            text = "".join(out.get("text", []))[: max_bytes - used]
            kept.append({**out, "text": [text]})
            used, dropped = max_bytes, dropped + size - len(text)
        else:
            dropped += size
            if out.get("output_type") == "error":      # an error must survive the cut: it decides the score
                kept.append(error_output(str(out.get("ename"))[:200], str(out.get("evalue"))[:2000]))
    if dropped:
        kept.append({"output_type": "stream", "name": "stdout",
                     "text": [f"\n[grader: {dropped:,} bytes of output were cut; the limit is {max_bytes:,} per cell]\n"]})
    return kept


# ----------------------------------------------------------------------------- the child
def _child(cells: list[tuple[int, str | None]], skipped: dict[int, str], limits: Limits, fd: int, threads: int,
           exam_fd: int | None = None) -> None:
    """Runs in the confined notebook process: run the cells, reporting each one on the run's channel.

    A cell without source is a test the examiner runs: this process only answers its questions
    (`student_side`) and reports nothing about it."""
    if "torch" in sys.modules:          # warmed for this lesson (OMP_NUM_THREADS covers a later import)
        sys.modules["torch"].set_num_threads(threads)
    from execnb.shell import CaptureShell
    from .student_side import serve_test
    shell = CaptureShell(path=os.getcwd(), mpl_format="png")
    sys.path[:] = [p for p in sys.path if p and os.path.isabs(p)]    # IPython adds the current folder
    wire = tripwire.install([fd] if exam_fd is None else [fd, exam_fd])   # a record for review, not a defence
    limit = limits.cell_seconds
    for index, source in cells:
        wire.cell = index                  # flags read "cell <index>: ..." (the grader names the cell)
        if source is None:                 # a test: the examiner's (a skipped one is the grader's "not run")
            if index not in skipped:
                try:
                    serve_test(exam_fd, shell.user_ns, index, limit + REPORT_GRACE)
                except Exception:           # the examiner has the verdict; go on with the notebook
                    pass
            continue
        send(fd, {"start": index})
        start = time.monotonic()
        if index in skipped:
            outputs = [error_output("CellNotRun", skipped[index])]
        else:
            outputs = shell.run(source, timeout=limit, grace=0.1)
            timed_out = (type(shell.exc) is TimeoutError and str(shell.exc).startswith("Timed out after")
                         and time.monotonic() - start >= limit)
            if timed_out:                                      # its thread cannot be stopped: end the child
                send(fd, {"timeout": index})
                os._exit(0)
        outputs = cap_outputs([dict(o) for o in outputs], limits.output_bytes)
        send(fd, {"done": index, "outputs": outputs, "seconds": time.monotonic() - start, "flags": wire.flags()})
    send(fd, {"finished": True, "flags": wire.flags()})


# ----------------------------------------------------------------------------- the worker's side
@dataclasses.dataclass(frozen=True)
class Exam:
    """The examiner's part of one notebook: who runs its test cells, and which cells they are."""
    examiner: Examiner
    notebook: str
    tests: frozenset[int]               # indices of the test cells (sourceless in the cells to run)


def run_notebook(cells: list[tuple[int, str | None]], readable: tuple[str, ...], limits: Limits,
                 scratch: str, threads: int = 1, isolate: bool = True,
                 without: frozenset[str] = frozenset(), exam: Exam | None = None) -> NotebookRun:
    """Run the code cells (index, source) in sandboxed runs until all are accounted for; with `exam`,
    the examiner runs the test cells."""
    run, skipped = NotebookRun(), {}
    start = time.monotonic()
    deadline = start + limits.notebook_seconds
    while True:
        run.attempts += 1
        policy = Policy(readable=readable, limits=limits, isolate=isolate, without=without)
        lost = _attempt(cells, skipped, policy, scratch, threads, deadline, run, exam)
        if lost is None:
            break
        index, why = lost
        run.events.append(why)
        if index is None or run.attempts >= MAX_ATTEMPTS or time.monotonic() >= deadline:
            for i, _ in cells:
                if i not in run.outputs:
                    run.outputs[i] = [error_output("CellNotRun", f"not run: {why}")]
            break
        skipped[index] = why + "; the notebook was run again without this cell"
    run.wall_seconds = time.monotonic() - start
    return run


def _attempt(cells, skipped, policy: Policy, scratch: str, threads: int, deadline: float, run: NotebookRun,
             exam: Exam | None = None):
    """One sandboxed run. Returns None when every cell reported, else (index of the lost cell or None, why)."""
    limits = policy.limits
    folder = tempfile.mkdtemp(prefix="run-", dir=scratch)   # the private root's stage, or the unconfined workdir
    policy = dataclasses.replace(policy, stage=folder, workdir=folder)
    r, w = os.pipe()
    examiner = _ExaminerRun(exam, skipped, limits, [(i, s) for i, s in cells if s is not None]) if exam else None
    exam_fd = examiner.student_fd if examiner else None
    sandboxed = sandbox.start(policy, lambda: _child(cells, skipped, limits, w, threads, exam_fd),
                              keep_fds=(w,) if exam_fd is None else (w, exam_fd))
    os.close(w)
    if examiner:
        examiner.started()
    running, lost, finished = None, None, False
    now = {}                             # per source (r, the examiner's reports): the cell it runs
    max_message = 4 * limits.output_bytes + (1 << 16)
    sources = [r] + ([examiner.reports] if examiner else [])
    current = lambda: next((now[fd] for fd in reversed(sources) if now.get(fd) is not None), now.get(r))  # noqa: E731
    tests = exam.tests if exam else frozenset()
    for index in tests & skipped.keys():             # the grader's own word: no process reports these
        run.outputs[index] = [error_output("CellNotRun", skipped[index])]
    try:
        while True:
            running = current()              # a test in progress, else the notebook's own cell
            wait_until = min(deadline, time.monotonic() + limits.cell_seconds + REPORT_GRACE)
            try:
                fd = _next_ready(sources, wait_until)
                message = receive(fd, wait_until, max_message)
            except TimeoutError:
                over = time.monotonic() >= deadline
                lost = (None if over else running,
                        f"the notebook ran past its {limits.notebook_seconds:.0f} s limit" if over else
                        f"cell {_label(running)} ran for more than {limits.cell_seconds:.0f} s and could not be stopped")
                break
            except ValueError as e:
                lost = (running, f"cell {_label(running)} broke the grader's channel ({e})")
                break
            from_examiner = fd != r
            running = now.get(fd)
            if message is None:
                if from_examiner:                              # the examiner ran its last test
                    sources.remove(fd)
                    continue
                break
            # a test cell's outputs come from the examiner alone (or are the grader's own "not run")
            allowed = (lambda i: i in tests) if from_examiner else (lambda i: i not in tests)
            if "start" in message:
                index = _known_index(message["start"], cells)
                if index is None or not allowed(index):    # blame the cell that runs, never the one named
                    lost = (running, f"cell {_label(running)} sent the grader a message about "
                                     f"{'another' if index is None else 'a test'} cell")
                    break
                running = now[fd] = index
            elif "done" in message and message["done"] == running and allowed(running):
                now[fd] = None
                run.flags = _flags(message, run.flags)     # the examiner's: answers that are the course's own
                run.outputs[running] = list(message.get("outputs") or [])
                run.seconds[running] = float(message.get("seconds", 0.0))
                if _ran_out_of_memory(run.outputs[running]):
                    run.events.append(f"cell {_label(running)} ran out of memory (MemoryError): one process of a "
                                      f"notebook may add {limits.memory_bytes / 2**20:,.0f} MB")
            elif "timeout" in message and message["timeout"] == running and allowed(running):
                lost = (running, f"cell {_label(running)} ran for more than {limits.cell_seconds:.0f} s")
                break
            elif message.get("finished") and not from_examiner:
                run.flags = _flags(message, run.flags)
                finished = True
                break
            else:
                lost = (running, f"cell {_label(running)} sent the grader a message out of order")
                break
    finally:
        os.close(r)
        if examiner:
            examiner.stop()
        running = running if lost else current()
        report = sandboxed.stop(grace=2.0 if lost is None and not finished else 0.0)
        _remove(folder)
    run.max_rss_bytes = max(run.max_rss_bytes, int(report.get("peak_memory_bytes") or 0))
    run.peak_processes = max(run.peak_processes, int(report.get("peak_processes") or 0))
    stopped = report.get("stopped")
    if stopped:                                              # a limit of the whole run decides the reason
        return running, f"cell {_label(running)} was stopped: {_describe_limit(stopped)}"
    if report.get("error") or report.get("setup_error"):
        return None, f"the sandbox could not be set up ({report.get('error') or report.get('setup_error')})"
    if lost is None and not finished:
        lost = (running, f"cell {_label(running)} ended the Python process ({_describe(report.get('status', 0), limits)})")
    if report.get("disk_full") and lost is None:
        run.events.append(f"the notebook filled its {limits.disk_bytes >> 20} MB of disk")
    return lost


class _ExaminerRun:
    """The examiner's side of one sandboxed run: the student's end of its channel, and its reports."""

    def __init__(self, exam: "Exam", skipped: dict[int, str], limits: Limits, cells: list[tuple[int, str]]):
        student, ours = socket.socketpair()
        self.student_fd = student.detach()
        self.reports, report_w = os.pipe()
        self.pid = exam.examiner.run(exam.notebook, set(skipped), limits.cell_seconds, ours.fileno(), report_w,
                                     cells)
        ours.close()
        os.close(report_w)

    def started(self) -> None:
        """The notebook's run has its end of the channel: this process lets go of it."""
        os.close(self.student_fd)

    def stop(self) -> None:
        os.close(self.reports)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _flags(message: dict, before: list[str]) -> list[str]:
    """The tripwire's flags a notebook's frame carries (all so far), bounded; the student's process
    wrote them, so they can only add to a review, never clear one: flags seen earlier are kept."""
    got = message.get("flags")
    got = [str(f)[:1000] for f in got[:tripwire.MAX_FLAGS + 1]] if type(got) is list else []
    return (before + [f for f in got if f not in before])[:4 * tripwire.MAX_FLAGS]


def _next_ready(fds: list[int], deadline: float) -> int:
    """The first of `fds` with something to read (the examiner's reports before the notebook's frames)."""
    left = deadline - time.monotonic()
    ready = ready_to_read(fds, left) if left > 0 else []
    if not ready:
        raise TimeoutError("no message before the deadline")
    return next(fd for fd in reversed(fds) if fd in ready)


def _ran_out_of_memory(outputs: list) -> bool:
    return any(isinstance(o, dict) and o.get("output_type") == "error" and o.get("ename") == "MemoryError"
               for o in outputs)


def _describe_limit(stopped: dict) -> str:
    """A limit the watchdog enforced, in words with its figures."""
    if stopped.get("limit") == "memory":
        return (f"its processes held {stopped['figure'] / 2**20:,.0f} MB, over the notebook's memory limit of "
                f"{stopped['allowed'] / 2**20:,.0f} MB")
    return (f"its processes used {stopped['figure']:.0f} s of CPU time, over the notebook's limit of "
            f"{stopped['allowed']:.0f} s")


def _remove(folder: str) -> None:
    """Remove a run's stage folder (empty once the run's mount namespace is gone)."""
    shutil.rmtree(folder, ignore_errors=True)


def _known_index(value, cells) -> int | None:
    """`value` if it is the index of one of the cells, else None."""
    return value if type(value) is int and value in {i for i, _ in cells} else None


def _label(index) -> str:
    return "?" if index is None else f"#{index}"


def _describe(status: int, limits: Limits) -> str:
    """Why a run's notebook process ended, from its init's wait status, in words."""
    code = os.waitstatus_to_exitcode(status) if isinstance(status, int) else 0
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    if sig == signal.SIGXCPU:
        return f"CPU time limit of {limits.cpu_seconds} s for one process"
    if sig == signal.SIGKILL:
        return "killed (the per-process memory or CPU limit, or by itself)"
    if sig:
        try:
            return f"killed by signal {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {code}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run grader.worker instead")
