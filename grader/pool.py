"""The instructor's warm pool: grading workers that outlive one `course grade` call.

A worker pays its imports once (torch and fastai: about 6 s); started per call, every call pays them
again. So `course grade` leases its workers from a pool process of the instructor's own, started on
the first call in a session of its own and left running until it has been idle for a while
(`course workers status|stop`). A lease hands the caller the worker's two pipes (SCM_RIGHTS on a Unix
socket) and the caller speaks the worker's own protocol on them (`grader.worker`): the pool never
reads a job or an answer, and a worker never runs student code (each run is a sandboxed fork).

Who can reach it: the socket lives in a folder only the instructor's user can open (0700, checked on
every use) that no sandbox's file world contains, and every connection is checked with SO_PEERCRED:
the peer must be this user, in this pool's user, PID, mount and network namespaces (a sandboxed
notebook is in its own), or it is refused. A stale pool is replaced, never used: its key covers this
Python and its installed packages, the grader's and `course_utils`' code, the thread count, the
number of workers and the limits; a pool that does not answer, or was left by a crash (a dead pid,
a leftover socket), is killed and cleaned first. A worker whose lease ends without the caller saying
it finished cleanly (the caller crashed or was interrupted mid-job), or that died, is killed and
replaced, so a half-read job never reaches the next call.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

from . import warm
from .execute import receive
from .protocol import ready_to_read

DIR_ENV = "COURSE_POOL_DIR"              # where the pool's folder is (default: see `pool_dir`)
SWITCH_ENV = "COURSE_POOL"               # "off": no pool (as `course grade --no-pool`)
DEFAULT_IDLE_MINUTES = 15.0
MAX_MESSAGE = 1 << 16
START_SECONDS = 30.0                     # for the pool process to answer after it was started
LEASE_SECONDS = 600.0                    # for a lease (every worker busy with another call, or starting)
MAX_START_FAILURES = 3                   # workers that die before they are ready, in a row: the pool gives up


class PoolError(RuntimeError):
    """The pool cannot be used (not reachable, refused, stale and busy); the caller grades without it."""


# ----------------------------------------------------------------------------- where, and which pool
def pool_dir() -> Path:
    """The pool's folder: $COURSE_POOL_DIR, else $XDG_RUNTIME_DIR or the temp folder, one per user."""
    if chosen := os.environ.get(DIR_ENV):
        return Path(chosen)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"cnn-cam-course-pool-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """Create the folder (0700) or check it: a real folder of this user's that nobody else can open."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PoolError(f"{path} is not a private folder of yours (owner uid {info.st_uid}, mode "
                        f"{oct(info.st_mode & 0o777)}, {'a folder' if stat.S_ISDIR(info.st_mode) else 'not a folder'}): "
                        f"remove it, or set {DIR_ENV} to another path")
    return path


@functools.lru_cache(maxsize=1)
def environment_key() -> str:
    """This Python, its installed packages and the code a worker runs (grader, course_utils), hashed
    (once per process: the pool's key and the default-model memo both use it)."""
    from . import layout
    h = hashlib.sha256(json.dumps([os.path.realpath(sys.executable), sys.version, os.getuid()]).encode())
    for where in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        try:
            h.update("\n".join(sorted(n for n in os.listdir(where) if n.endswith(".dist-info"))).encode())
        except OSError:
            pass
    for package in ("grader", "course_utils"):
        for path in sorted((layout.ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(layout.ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def pool_key(workers: int, threads: int, limits_text: str) -> str:
    """The key a pool must have to be used: `environment_key` plus the workers, threads and limits."""
    return hashlib.sha256(json.dumps([environment_key(), workers, threads, limits_text]).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Whether `course grade` uses the pool, and for how long an idle pool stays."""
    enabled: bool = True
    idle_minutes: float = DEFAULT_IDLE_MINUTES
    warm: tuple[str, ...] = ()            # modules the course declares (`grader.warm`)


def settings(course_root: Path, enabled: bool | None = None, idle_minutes: float | None = None) -> Settings:
    """course.toml's [workers] (pool, idle_minutes, warm), then $COURSE_POOL=off, then the command's flags."""
    from .late import ConfigError, workers_table
    table = workers_table(course_root)
    path = Path(course_root) / "course.toml"
    if unknown := set(table) - {"pool", "idle_minutes", "warm"}:
        raise ConfigError(f"{path} [workers]: unknown setting(s) {', '.join(sorted(unknown))}; "
                          "use pool = true|false, idle_minutes = N, warm = [\"module\", …]")
    pool, idle, declared = table.get("pool", True), table.get("idle_minutes", DEFAULT_IDLE_MINUTES), table.get("warm", [])
    if type(pool) is not bool:
        raise ConfigError(f"{path} [workers]: pool must be true or false, not {pool!r}")
    if type(idle) not in (int, float) or idle <= 0:
        raise ConfigError(f"{path} [workers]: idle_minutes must be a number of minutes above 0, not {idle!r}")
    if not isinstance(declared, list):
        raise ConfigError(f"{path} [workers]: warm must be a list of module names, e.g. [\"sklearn\"]")
    try:
        declared = warm.checked(declared)
    except ValueError as e:
        raise ConfigError(f"{path} [workers]: warm: {e}") from None
    if os.environ.get(SWITCH_ENV, "").lower() in ("off", "0", "false", "no"):
        pool = False
    if enabled is not None:
        pool = enabled
    if idle_minutes is not None:
        if idle_minutes <= 0:
            raise ValueError("--pool-idle must be a number of minutes above 0")
        idle = idle_minutes
    return Settings(pool, float(idle), declared)


# ----------------------------------------------------------------------------- messages on the socket
def _send(conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
    socket.send_fds(conn, [json.dumps(message).encode()], list(fds))


def _refuse(conn: socket.socket, why: str) -> None:
    """Tell a refused peer why, then close so that it reads the reason rather than a reset.

    Closing a Unix socket with unread data resets the peer, and a reset is reported before the data
    queued for it; so no more is taken from the peer (shutdown), what it sent is drained, then close."""
    try:
        _send(conn, {"refused": why})
        conn.shutdown(socket.SHUT_RDWR)
        while conn.recv(MAX_MESSAGE, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def _request(conn: socket.socket, message: dict, timeout: float | None, nfds: int = 0) -> tuple[dict | None, list[int]]:
    """Send one request and read the answer; a pool that refused this process may have shut the
    connection before the request arrived, so the refusal queued for us is read even then."""
    try:
        _send(conn, message)
    except (BrokenPipeError, ConnectionResetError) as sending:
        answer, fds = _receive(conn, 0.5, nfds)
        if answer is None:
            raise sending
        return answer, fds
    return _receive(conn, timeout, nfds)


def _receive(conn: socket.socket, timeout: float | None, nfds: int = 0) -> tuple[dict | None, list[int]]:
    """One message (None when the other end closed) and the descriptors it carried."""
    conn.settimeout(timeout)
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, nfds)
    except socket.timeout:
        raise PoolError("the warm pool did not answer in time") from None
    finally:
        conn.settimeout(None)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = json.loads(data)
    if not isinstance(message, dict):
        raise PoolError("the warm pool sent something that is not a message")
    return message, fds


def _connect(folder: Path, timeout: float = 5.0) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(timeout)
    try:
        conn.connect(str(folder / "pool.sock"))
    except OSError:
        conn.close()
        raise
    conn.settimeout(None)
    return conn


def ask(folder: Path, message: dict, timeout: float = 5.0) -> dict:
    """One request to the pool in `folder`, one answer; raises PoolError (or OSError if nobody listens)."""
    with _connect(folder, timeout) as conn:
        answer, _ = _request(conn, message, timeout)
    if answer is None:
        raise PoolError("the warm pool closed the connection")
    if "refused" in answer:
        raise PoolError(f"the warm pool refused this process: {answer['refused']}")
    return answer


# ----------------------------------------------------------------------------- the caller's side
def read_info(folder: Path) -> dict | None:
    try:
        info = json.loads((folder / "pool.json").read_text())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _is_pool_process(pid: int) -> bool:
    """Is `pid` a live pool process of this user (not a recycled pid of something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return os.stat(f"/proc/{pid}").st_uid == os.getuid() and b"grader.pool" in cmdline
    except OSError:
        return False


def stop(folder: Path, log: Callable[[str], None] = lambda m: None) -> bool:
    """Stop the pool in `folder` (asked, then killed if it does not end) and remove what it left; True if
    one was running."""
    info = read_info(folder) or {}
    pid = int(info.get("pid", 0) or 0)
    running = pid > 0 and _is_pool_process(pid)
    if running:
        try:
            ask(folder, {"op": "stop"}, timeout=5.0)
        except (PoolError, OSError, ValueError):
            log(f"the warm pool (pid {pid}) did not answer: killing it")
        deadline = time.monotonic() + 10
        while _is_pool_process(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_pool_process(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for name in ("pool.sock", "pool.json"):
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
    return running


def status(folder: Path | None = None) -> dict | None:
    """What the pool in `folder` says about itself (None when there is none)."""
    folder = folder or pool_dir()
    info = read_info(folder)
    if not info or not _is_pool_process(int(info.get("pid", 0) or 0)):
        return None
    try:
        return ask(folder, {"op": "status"})
    except (PoolError, OSError, ValueError):
        return {**info, "answering": False}


def ensure_pool(key: str, workers: int, threads: int, modules: tuple[str, ...], idle_minutes: float,
                log: Callable[[str], None] = print) -> Path:
    """The folder of a pool with this key that answers: the running one, or a new one started in place
    of a stale, crashed or missing one. Raises PoolError when none can be had (e.g. a stale pool is busy)."""
    folder = private_dir(pool_dir())
    with open(folder / "pool.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_info(folder)
        if info and _is_pool_process(int(info.get("pid", 0) or 0)):
            try:
                answer = ask(folder, {"op": "hello"})
                if answer.get("key") == key and not answer.get("broken"):
                    return folder
                if answer.get("leased"):
                    raise PoolError("the warm pool is busy with another call made with other settings or code")
                log(f"warm pool: {answer['broken']}: starting a new one" if answer.get("key") == key else
                    "warm pool: the environment, code or limits changed: starting a new one")
            except (OSError, ValueError):
                log("warm pool: the running pool does not answer: replacing it")
        elif info or (folder / "pool.sock").exists():
            log("warm pool: cleaning up after a pool that ended without stopping")
        stop(folder, log)
        _start(folder, key, workers, threads, modules, idle_minutes)
        return folder


def _start(folder: Path, key: str, workers: int, threads: int, modules: tuple[str, ...], idle_minutes: float) -> None:
    from .worker import worker_environment
    home = Path.home()
    with open(folder / "pool.log", "ab") as out:
        os.chmod(folder / "pool.log", 0o600)
        subprocess.Popen([sys.executable, "-P", "-m", "grader.pool", "--key", key, "--workers", str(workers),
                          "--threads", str(threads), "--idle", str(idle_minutes * 60), "--warm", ",".join(modules),
                          "--dir", str(folder)],
                         env=worker_environment(threads), cwd=str(home if home.is_dir() else "/"),
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        info = read_info(folder)
        if info and info.get("key") == key:
            try:
                ask(folder, {"op": "hello"})
                return
            except (PoolError, OSError, ValueError):
                pass
        time.sleep(0.02)
    raise PoolError(f"the warm pool did not start within {START_SECONDS:.0f} s (see {folder / 'pool.log'})")


class Lease:
    """One worker of the pool, held by one caller: its pipes, until `release`."""

    def __init__(self, folder: Path, timeout: float = LEASE_SECONDS):
        self._conn = _connect(folder)
        try:
            answer, fds = _request(self._conn, {"op": "lease"}, timeout, nfds=2)
        except BaseException:
            self._conn.close()
            raise
        if answer is None or "refused" in answer or "error" in answer or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self._conn.close()
            raise PoolError(f"the warm pool gave no worker: {(answer or {}).get('refused') or (answer or {}).get('error') or 'it closed the connection'}")
        self.to_worker, self.from_worker = fds
        self.pid = int(answer.get("pid", 0))

    def release(self, clean: bool) -> None:
        """Give the worker back; unless `clean` (no job half sent or half answered), the pool replaces it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            _send(conn, {"op": "release", "clean": bool(clean)})
            _receive(conn, 5.0)             # the pool has it back (or has killed it) before we go on
        except (OSError, PoolError, ValueError):
            pass
        finally:
            conn.close()

    def close_pipes(self) -> None:
        for fd in (self.to_worker, self.from_worker):
            try:
                os.close(fd)
            except OSError:
                pass


# ----------------------------------------------------------------------------- the pool process
@dataclasses.dataclass
class _Slot:
    proc: subprocess.Popen
    ready: bool = False
    lease: socket.socket | None = None
    jobs: int = 0
    started: float = dataclasses.field(default_factory=time.time)


class _Server:
    def __init__(self, folder: Path, key: str, workers: int, threads: int, modules: tuple[str, ...], idle: float):
        self.folder, self.key, self.threads, self.modules, self.idle = folder, key, threads, modules, idle
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = folder / "pool.sock"
        if path.exists():
            path.unlink()
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.slots = [self._spawn() for _ in range(workers)]
        self.conns: dict[socket.socket, _Slot | None] = {}
        self.waiting: deque[socket.socket] = deque()
        self.last_active, self.stopping, self.failures, self.broken = time.monotonic(), False, 0, ""
        self.refused, self.closed = 0, False
        self._write_info()

    def _write_info(self) -> None:
        info = {"pid": os.getpid(), "key": self.key, "started": time.time(), "workers": len(self.slots),
                "threads": self.threads, "idle_seconds": self.idle}
        tmp = self.folder / f".pool.json.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.folder / "pool.json")

    def _spawn(self) -> _Slot:
        from .worker import worker_environment
        home = Path.home()
        proc = subprocess.Popen([sys.executable, "-P", "-m", "grader.worker", "--warm", ",".join(self.modules)],
                                env=worker_environment(self.threads), cwd=str(home if home.is_dir() else "/"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        return _Slot(proc)

    def _replace(self, slot: _Slot, why: str) -> None:
        print(f"pool: worker {slot.proc.pid} replaced ({why})", flush=True)
        _kill(slot.proc)
        self.slots[self.slots.index(slot)] = self._spawn()

    # -- the loop
    def run(self) -> None:
        while not self.stopping:
            watch = [self.listener, *self.conns] + [s.proc.stdout for s in self.slots if s.lease is None]
            ready = ready_to_read(watch, 1.0)
            for item in ready:
                if item is self.listener:
                    self._accept()
                elif isinstance(item, socket.socket):
                    if item in self.conns:
                        self._handle(item)
                else:
                    self._worker_says(next(s for s in self.slots if s.proc.stdout is item))
            for slot in list(self.slots):
                if slot.lease is None and slot.proc.poll() is not None:
                    self._replace(slot, f"it ended with {slot.proc.returncode}")
            self._hand_out()
            if self.conns or any(s.lease for s in self.slots):
                self.last_active = time.monotonic()
            elif time.monotonic() - self.last_active > self.idle:
                print(f"pool: idle for {self.idle:.0f} s, stopping", flush=True)
                break
        self.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        why = refusal(conn)
        if why:
            self.refused += 1
            print(f"pool: refused a connection: {why}", flush=True)
            _refuse(conn, why)
            return
        self.conns[conn] = None

    def _handle(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(MAX_MESSAGE)
            request = json.loads(data) if data else None
        except (OSError, ValueError):
            request = None
        if not isinstance(request, dict):
            self._drop(conn, clean=False)
            return
        op = request.get("op")
        if op == "hello":
            self._answer(conn, {"key": self.key, "pid": os.getpid(), "leased": sum(bool(s.lease) for s in self.slots),
                                "broken": self.broken})
        elif op == "status":
            self._answer(conn, self._status())
        elif op == "stop":
            self._answer(conn, {"stopping": True})
            self.stopping = True
        elif op == "lease":
            if self.broken:
                self._answer(conn, {"error": self.broken})
            elif conn not in self.waiting and self.conns.get(conn) is None:
                self.waiting.append(conn)
        elif op == "release":
            self._give_back(conn, clean=bool(request.get("clean")))
            self._answer(conn, {"released": True})
        else:
            self._answer(conn, {"error": f"unknown request {op!r}"})

    def _answer(self, conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
        try:
            _send(conn, message, fds)
        except OSError:
            self._drop(conn, clean=False)

    def _give_back(self, conn: socket.socket, clean: bool) -> None:
        slot = self.conns.get(conn)
        if slot is None:
            return
        self.conns[conn] = None
        slot.lease = None
        if not clean or slot.proc.poll() is not None:
            self._replace(slot, "its lease ended in the middle of a job" if slot.proc.poll() is None else "it died")

    def _drop(self, conn: socket.socket, clean: bool) -> None:
        """A connection closed: its worker, if it held one, is replaced (its caller may have crashed mid-job)."""
        if conn in self.conns:
            self._give_back(conn, clean)
            del self.conns[conn]
        if conn in self.waiting:
            self.waiting.remove(conn)
        conn.close()

    def _worker_says(self, slot: _Slot) -> None:
        """A free worker's stdout: its ready frame once, else it ended (EOF)."""
        try:
            frame = receive(slot.proc.stdout.fileno(), time.monotonic() + 5, 1 << 16) if not slot.ready else None
        except (TimeoutError, ValueError, OSError):
            frame = None
        if frame and frame.get("ready"):
            slot.ready, self.failures = True, 0
            return
        self.failures += 0 if slot.ready else 1
        if self.failures >= MAX_START_FAILURES:
            self.broken = f"{self.failures} workers in a row ended before they were ready (see {self.folder / 'pool.log'})"
            for conn in list(self.waiting):
                self._answer(conn, {"error": self.broken})
            self.waiting.clear()
        self._replace(slot, "it ended" if slot.ready else "it ended before it was ready")

    def _hand_out(self) -> None:
        for slot in self.slots:
            if not self.waiting:
                return
            if slot.ready and slot.lease is None and slot.proc.poll() is None:
                conn = self.waiting.popleft()
                slot.lease, slot.jobs = conn, slot.jobs + 1
                self.conns[conn] = slot
                self._answer(conn, {"pid": slot.proc.pid}, [slot.proc.stdin.fileno(), slot.proc.stdout.fileno()])

    def _status(self) -> dict:
        idle_for = 0.0 if self.conns or any(s.lease for s in self.slots) else time.monotonic() - self.last_active
        return {"pid": os.getpid(), "key": self.key, "threads": self.threads, "idle_seconds": self.idle,
                "idle_for": idle_for, "refused_connections": self.refused, "broken": self.broken,
                "workers": [{"pid": s.proc.pid, "ready": s.ready, "leased": s.lease is not None, "leases": s.jobs,
                             "started": s.started} for s in self.slots]}

    def close(self) -> None:
        """Remove the socket and the info file (if still this pool's), end every worker (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for name in ("pool.sock", "pool.json"):
            try:
                if name != "pool.json" or (read_info(self.folder) or {}).get("pid") == os.getpid():
                    (self.folder / name).unlink()
            except FileNotFoundError:
                pass
        self.listener.close()
        for conn in list(self.conns):
            conn.close()
        for slot in self.slots:
            _kill(slot.proc, grace=5.0)


def refusal(conn: socket.socket) -> str | None:
    """Why the process at the other end of `conn` may not use the pool (None: it may).

    It must be this user, in this process's user, PID, mount and network namespaces: a notebook's
    sandbox has namespaces of its own (as root, a uid of its own too)."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.getuid():
        return f"uid {uid} is not the pool's owner"
    if pid <= 0:
        return "the process is not visible from the pool (another PID namespace)"
    for ns in ("user", "pid", "mnt", "net"):
        try:
            if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
                return f"the process is in another {ns} namespace"
        except OSError:
            return f"the process's {ns} namespace cannot be read"
    return None


def _kill(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """End a worker: close its input (it stops at end of input) and wait `grace`, then SIGKILL."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=grace) if grace else None
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """The pool process (`python -m grader.pool --dir D --key K --workers N --threads T --idle S --warm m,…`)."""
    import argparse
    parser = argparse.ArgumentParser(prog="grader.pool")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--warm", default="")
    args = parser.parse_args(argv)
    folder = private_dir(args.dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = _Server(folder, args.key, max(1, args.workers), max(1, args.threads),
                     warm.checked(filter(None, args.warm.split(","))) or warm.BASE, args.idle)
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
