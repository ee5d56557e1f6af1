"""The examiner: the process that holds a notebook's test cells and computes every verdict.

Under `course grade`, a lesson's test cells never enter the student's process. For each job the
worker forks one examiner before any student run; it reads the job's test cells itself (the frame
after the job on the worker's input, which the job's own process never reads, so no student run is
forked from memory that held them). For each run of a notebook it forks a fresh child that runs the
test cells in order, in a namespace prepared from the lesson's setup cells (the instructor's), as
the student's process reaches them. A test asks the student's process for values through `S`
(`course_utils.checks.examine`): names, attributes, items, calls on arguments it chose; answers come
back by value (`protocol`) and are checked here. The student's process never sees a test's source,
and nothing it sends can be more than a value: it cannot say pass, fail or a score.

Reports to the job's process, on a pipe of their own: {"start": i}, {"done": i, "outputs", "seconds"},
{"timeout": i}; these are the only frames that decide a test cell's outputs.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import io
import json
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable

from . import protocol

SETUP_TAG = "setup"                 # cell tag: the examiner runs the instructor's version of this cell
MAX_BYTES_PER_TEST = 512 << 20      # all answers of one test cell together


class ChannelBroken(Exception):
    """The student's process answered out of turn, malformed, too much or not at all."""


class StudentError(Exception):
    """An exception the student's code raised that is not one of Python's own (its type name, message)."""


# ----------------------------------------------------------------------------- the examiner's view
class Channel:
    """Requests to the student's process, one at a time, each answer matched to its request."""

    def __init__(self, fd: int, deadline: float = float("inf")):
        self.fd, self.deadline = fd, deadline
        self.seq, self.received, self.broken, self.timed_out = 0, 0, None, False
        self.remotes: dict[int, Remote] = {}
        self.watch: Any = None          # a reference.Watch: notes answers that are the course's own (a tripwire)

    def remote(self, handle: int, type_name: str, kinds: tuple[str, ...] = ()) -> "Remote":
        """One Remote per handle (the notebook gives one handle per object): `is` tells the same object."""
        if handle not in self.remotes:
            self.remotes[handle] = Remote(self, handle, type_name, kinds)
        return self.remotes[handle]

    def ask(self, request: dict, blobs: list[bytes] = ()) -> Any:
        """Send one request; return its decoded answer, or raise the student's exception or ChannelBroken."""
        if self.broken:
            raise ChannelBroken(self.broken)
        self.seq += 1
        try:
            protocol.write_frame(self.fd, {**request, "seq": self.seq}, list(blobs))
            frame = self._read_answer()
            if frame is None:
                raise protocol.ProtocolError("the notebook's process ended during the test")
            answer, got = frame
            self.received += sum(map(len, got))
            if answer.get("seq") != self.seq:
                raise protocol.ProtocolError("an answer came out of turn")
            if "ok" in answer and "error" not in answer:
                value = protocol.decode(answer["ok"], got, self.remote)
                if self.watch is not None:
                    self.watch.received(request, answer["ok"])
                return value
            if "error" not in answer:
                raise protocol.ProtocolError("an answer has neither a value nor an error")
            error = _student_exception(answer["error"])
        except TimeoutError:
            self.broken, self.timed_out = "the notebook's process did not answer in time", True
            raise ChannelBroken(self.broken) from None
        except (protocol.ProtocolError, OSError) as e:
            self.broken = f"the notebook's process broke the examiner's protocol ({e})"
            raise ChannelBroken(self.broken) from None
        raise error         # out of the try: a student's OSError or TimeoutError is the test's, not the channel's

    def _read_answer(self) -> tuple[dict, list[bytes]] | None:
        """The next frame, refused before its blobs are read if they would take this test's answers
        past MAX_BYTES_PER_TEST."""
        left = max(0, MAX_BYTES_PER_TEST - self.received)
        bounds = protocol.DEFAULT_BOUNDS
        if left < bounds.blob_bytes:
            bounds = dataclasses.replace(bounds, blob_bytes=left)
        try:
            return protocol.read_frame(self.fd, self.deadline, bounds)
        except protocol.OverBudget:
            if bounds is protocol.DEFAULT_BOUNDS:
                raise
            raise protocol.ProtocolError(f"the answers of one test would pass {MAX_BYTES_PER_TEST >> 20} MB") from None

    def send_value(self, value: Any) -> tuple[Any, list[bytes]]:
        """`value` encoded for a request (Remote handles by number, torch.nn modules by value)."""
        blobs: list[bytes] = []
        return protocol.encode(value, blobs, _handle_of, modules=True), blobs


def _handle_of(value: Any) -> int:
    if type(value) is Remote:
        return object.__getattribute__(value, "_handle")
    raise TypeError(f"a {type(value).__name__} of the examiner cannot be sent to the notebook "
                    "(only values, torch.nn modules and the notebook's own objects)")


def _student_exception(error: Any) -> Exception:
    """The student's exception as one of Python's own types where it is one, else StudentError."""
    if type(error) is not dict:
        return StudentError("?", "malformed error")
    name, message = str(error.get("type", "?"))[:100], str(error.get("message", ""))[:2000]
    cls = getattr(builtins, name, None)
    # not StopIteration: raised from a call inside map() or next(), it would end the iteration quietly
    if (isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins"
            and not issubclass(cls, (StopIteration, StopAsyncIteration))):
        try:
            return cls(message)
        except Exception:
            pass
    return StudentError(f"{name}: {message}")


class Remote:
    """An object of the notebook's process (a model, a hook, a function) that cannot travel.

    Attribute access, items, calls, len(), bool() and iteration are asked of the notebook's process;
    results come back as values, or as another Remote. Comparison is identity, on purpose: a value
    to compare is fetched by value first.
    """
    __slots__ = ("_channel", "_handle", "__student_type__", "__student_kinds__")

    def __init__(self, channel: Channel, handle: int, type_name: str, kinds: tuple[str, ...] = ()):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "__student_type__", type_name[:200])
        object.__setattr__(self, "__student_kinds__", tuple(kinds))

    def _ask(self, op: str, **fields) -> Any:
        channel = object.__getattribute__(self, "_channel")
        return channel.ask({"op": op, "of": object.__getattribute__(self, "_handle"), **fields})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("attr", name=name)

    def __getitem__(self, key: Any) -> Any:
        channel = object.__getattribute__(self, "_channel")
        encoded, blobs = channel.send_value(key)
        return channel.ask({"op": "item", "of": object.__getattribute__(self, "_handle"), "key": encoded}, blobs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        channel = object.__getattribute__(self, "_channel")
        encoded, blobs = channel.send_value(list(args))
        kw, kw_blobs = channel.send_value(dict(kwargs))
        offset = len(blobs)
        return channel.ask({"op": "call", "of": object.__getattribute__(self, "_handle"),
                            "args": encoded["items"], "kwargs": dict(_shift(kw, offset)["items"]),
                            "grad": torch.is_grad_enabled()}, blobs + kw_blobs)

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int or n < 0:
            raise TypeError("len() of the notebook's object is not a count")
        return n

    def __bool__(self) -> bool:
        return self._ask("bool") is True

    def __iter__(self):
        items = self._ask("iter")
        if type(items) is not list:
            raise TypeError("the notebook's object did not give a list of items")
        return iter(items)

    def __enter__(self) -> Any:
        return self._ask("enter")

    def __exit__(self, exc_type, exc, tb) -> bool:
        """The notebook's __exit__ runs with the body's exception (by type name and message). Whether it
        swallows it counts only for exceptions that are not a verdict: a failed check (AssertionError)
        or a broken channel always propagates."""
        error = None if exc is None else {"type": type(exc).__name__[:100], "message": _text(exc)}
        swallowed = self._ask("exit", error=error) is True
        return swallowed and isinstance(exc, Exception) and not isinstance(exc, (AssertionError, ChannelBroken))

    def __repr__(self) -> str:
        return f"<the notebook's {object.__getattribute__(self, '__student_type__')}>"


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:
        return ""


def _shift(encoded: Any, offset: int) -> Any:
    """Renumber blob indices in an encoded value (a second value's blobs come after the first's)."""
    if type(encoded) is list:
        return [_shift(v, offset) for v in encoded]
    if type(encoded) is dict:
        return {k: (v + offset if k == "blob" and type(v) is int else _shift(v, offset)) for k, v in encoded.items()}
    return encoded


class Student:
    """`S` in a test cell under the examiner: the notebook's names, asked for by value."""

    def __init__(self, channel: Channel, cells: list[tuple[int, str]] = ()):
        self._channel = channel
        self._cells = list(cells)       # the notebook's code cells (index, source), from the grader's side
        self._before = 0                # the index of the test cell running

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._channel.ask({"op": "get", "name": name})
        except NameError:
            raise AssertionError(f"`{name}` is not defined: run the cell that defines it, "
                                 "and keep its name") from None

    def send(self, value: Any) -> Any:
        """Put a copy of `value` (a tensor, a torch.nn model, an image...) in the notebook; returns its handle."""
        encoded, blobs = self._channel.send_value(value)
        return self._channel.ask({"op": "send", "value": encoded}, blobs)

    def source(self, name: str) -> str:
        """The code that last defined `name` in the cells above this test, read from the notebook the
        grader assembled (the student's process is not asked: it could answer anything)."""
        from course_utils.checks import definition
        return definition([source for index, source in self._cells if index < self._before], name)


# ----------------------------------------------------------------------------- running test cells
def run_cell(source: str, namespace: dict, label: str) -> list[dict]:
    """Run one cell's code in `namespace`; its outputs as nbformat dicts (stdout, stderr, error)."""
    out, err = io.StringIO(), io.StringIO()
    error = None
    code = _compile(source, label)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(code, namespace)
        except BaseException as e:          # the verdict: this cell failed, and why
            error = e
    outputs = [{"output_type": "stream", "name": name, "text": [text]}
               for name, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())) if text]
    if error is not None:
        where = [f'File "{f.filename}", line {f.lineno}' for f in traceback.extract_tb(error.__traceback__)
                 if f.filename == _filename(label)][-1:]               # the line, never its text
        outputs.append({"output_type": "error", "ename": type(error).__name__, "evalue": str(error),
                        "traceback": where + traceback.format_exception_only(type(error), error)})
    return outputs


def _compile(source: str, label: str):
    """Compile a cell, IPython syntax (magics) included."""
    from IPython.core.inputtransformer2 import TransformerManager
    return compile(TransformerManager().transform_cell(source), _filename(label), "exec")


def _filename(label: str) -> str:
    """The file name a test cell's code is compiled under (feedback reads the failing line from it)."""
    return f"<test cell {label}>"


_setups: dict[str, dict] = {}


def setup_namespace(sources: list[str]) -> dict:
    """The namespace the lesson's setup cells (the instructor's) leave, made once per process."""
    key = "\n\n".join(sources)
    if key not in _setups:
        import random
        import numpy as np
        import torch
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        namespace: dict = {"__name__": "__main__"}
        for i, source in enumerate(sources):
            for output in run_cell(source, namespace, f"setup cell {i + 1}"):
                if output["output_type"] == "error":
                    raise RuntimeError(f"the lesson's setup cell {i + 1} failed in the examiner: "
                                       f"{output['ename']}: {output['evalue']}")
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        _setups[key] = namespace
    return _setups[key]


def examine_run(exam_fd: int, report_fd: int, tests: list[tuple[int, str, str]], skipped: set[int],
                setup: list[str], cell_seconds: float, send: Callable[[int, dict], None], lesson: str = "",
                cells: list[tuple[int, str]] = ()) -> None:
    """In a fresh child of the examiner: run the test cells as the notebook's process reaches them.
    Each report of a test carries the flags `reference.Watch` noted during it (answers that are the course's).
    `cells` are the notebook's own code cells, which `S.source` reads."""
    from course_utils import checks
    from .reference import Watch
    import torch
    torch.set_num_threads(1)
    namespace = dict(setup_namespace(setup))
    channel = Channel(exam_fd)
    channel.watch = Watch(lesson)
    student = Student(channel, cells)
    checks.use_examiner(student)
    for index, label, source in tests:
        if index in skipped:
            continue
        student._before = index
        if channel.broken is None:
            try:
                frame = protocol.read_frame(exam_fd, time.monotonic() + 10 ** 9)
                if frame is None:
                    return                                   # the notebook's run ended before this test
                if frame[0] != {"ready": index}:
                    raise protocol.ProtocolError("the notebook's process announced the wrong test")
            except (protocol.ProtocolError, OSError) as e:
                channel.broken = f"the notebook's process broke the examiner's protocol ({e})"
        send(report_fd, {"start": index})
        start = time.monotonic()
        channel.deadline, channel.received = start + cell_seconds, 0
        if channel.broken:
            outputs = [_error("ExaminerError", channel.broken)]
        else:
            outputs = run_cell(source, namespace, label)
        if channel.timed_out:
            send(report_fd, {"timeout": index})
            return
        send(report_fd, {"done": index, "outputs": outputs, "seconds": time.monotonic() - start,
                         "flags": [f"cell {index}: {flag}" for flag in channel.watch.take()]})
        if channel.broken is None:
            try:
                protocol.write_frame(exam_fd, {"op": "end"})
            except OSError:
                channel.broken = "the notebook's process closed the examiner's channel"


def _error(ename: str, message: str) -> dict:
    return {"output_type": "error", "ename": ename, "evalue": message, "traceback": [f"{ename}: {message}"]}


# ----------------------------------------------------------------------------- which cells run where
def uses_examiner(source: str) -> bool:
    """Whether a test cell is written for the examiner (it calls `examine(...)`)."""
    try:
        tree = ast.parse(_plain_python(source))
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "examine"
               for n in ast.walk(tree))


def _plain_python(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell(source)


def names_bound(sources: list[str]) -> set[str]:
    """Names the cells bind at top level or inside (imports, definitions, assignments); star imports bind none here."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(_plain_python(source))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"}
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def one_mode_only(source: str, setup_names: set[str], notebook_names: set[str]) -> str | None:
    """Why a test cell would not run the same in both modes, or None.

    Under the examiner a test sees the setup cells' names, its own and `S`: a name that only the
    notebook's other cells bind (an answer, a student's variable), used directly, works in-process only.
    """
    if not uses_examiner(source):
        return "it does not use examine(...), so it would run in the student's process"
    tree = ast.parse(_plain_python(source))
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    direct = sorted(loaded & (notebook_names - setup_names - names_bound([source])))
    if direct:
        return (f"it uses {', '.join(direct[:5])} directly, which only the student's process has "
                "(ask for it through S, or tag the cell that defines it 'setup')")
    return None


# ----------------------------------------------------------------------------- the examiner process
class Examiner:
    """A worker's examiner: forked from the warm worker before any job, it never runs student code.

    It keeps the lessons' setup namespaces between jobs (made once per worker), reads each job's test
    cells and setup itself from the worker's input (`read_job`), and forks one child per run of a
    notebook to run its tests (`run`). No student run is forked from it or from anything that held
    a test or an answer of the instructor's.
    """

    def __init__(self, pid: int, control: socket.socket):
        self.pid, self._control = pid, control

    @classmethod
    def start(cls, jobs_fd: int) -> "Examiner":
        """Fork the examiner; it reads the test frames that follow each job on `jobs_fd`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                _die_with_parent()
                code = _serve(theirs, jobs_fd)
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def _ask(self, request: dict, fds: list[int] = ()) -> dict:
        socket.send_fds(self._control, [json.dumps(request).encode()], list(fds))
        answer = self._control.recv(1 << 16)
        if not answer:
            raise RuntimeError("the examiner ended")
        answer = json.loads(answer)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def read_job(self) -> None:
        """Have the examiner read this job's test cells and setup (the frame after the job)."""
        self._ask({"op": "job"})

    def run(self, notebook: str, skipped: set[int], cell_seconds: float, exam_fd: int, report_fd: int,
            cells: list[tuple[int, str]] = ()) -> int:
        """Start the tests of one run of `notebook` (whose code cells are `cells`); returns the pid of
        the child running them. The cells travel in a memory file: they may be larger than a request."""
        cells_fd = os.memfd_create("notebook-cells", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(cells_fd), "w", encoding="utf-8") as f:
                json.dump([[int(i), str(s)] for i, s in cells], f)
            return int(self._ask({"op": "run", "notebook": notebook, "skipped": sorted(skipped),
                                  "cell_seconds": cell_seconds}, [exam_fd, report_fd, cells_fd])["pid"])
        finally:
            os.close(cells_fd)

    def end_job(self) -> None:
        self._ask({"op": "end"})

    def warm(self, modules: list[str]) -> None:
        """Have the examiner import these modules too (`grader.warm`), before the tests that use them."""
        self._ask({"op": "warm", "modules": list(modules)})

    def close(self) -> None:
        self._control.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(control: socket.socket, jobs_fd: int) -> int:
    """The examiner's loop: read a job's tests, fork a child per run of a notebook, forget the job."""
    from .execute import receive, send
    job: dict = {}
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, 3)
        except OSError:
            return 0
        if not data:
            return 0
        _reap()
        request = json.loads(data)
        try:
            if request["op"] == "job":
                job = receive(jobs_fd, time.monotonic() + 60, 1 << 30) or {}
                for setup in job.get("setup", {}).values():
                    setup_namespace(setup)                   # made once per worker and lesson
                answer = {"ok": True}
            elif request["op"] == "warm":
                from . import warm
                warm.import_all(warm.checked(request["modules"]))
                answer = {"ok": True}
            elif request["op"] == "run":
                name = request["notebook"]
                tests = [(int(i), str(label), str(source)) for i, label, source in job["tests"].get(name, [])]
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        control.close()
                        _die_with_parent()
                        examine_run(fds[0], fds[1], tests, set(request["skipped"]), job["setup"].get(name, []),
                                    float(request["cell_seconds"]), send, lesson=name,
                                    cells=_read_cells(fds[2]) if len(fds) > 2 else [])
                        code = 0
                    finally:
                        os._exit(code)
                answer = {"pid": pid}
            else:
                job, answer = {}, {"ok": True}
        except Exception as e:
            answer = {"error": f"the examiner could not prepare the tests ({type(e).__name__}: {e})"[:4000]}
        for fd in fds:
            os.close(fd)
        control.send(json.dumps(answer).encode())


def _read_cells(fd: int) -> list[tuple[int, str]]:
    """The notebook's code cells, as the job's process wrote them to a memory file."""
    with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
        f.seek(0)
        return [(int(i), str(s)) for i, s in json.load(f)]


def _reap() -> None:
    """Collect the runs' children that have ended."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL when the parent ends."""
    import ctypes
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)
