"""Confine one student notebook run: its own process world, file world, network and limits.

`Sandbox.start(policy, target, keep_fds)` forks three processes, none of which exec, so the warm
imports of the worker are kept:
- the **keeper**, in the worker's PID namespace: enters new namespaces (user, as a normal user;
  PID, mount, network, IPC, UTS), forks the init, watches the run's memory and CPU together
  (`watchdog.Watchdog`, 40 times a second) and stops the run over a limit. It reports to the worker
  on a pipe only it holds: what stopped the run and at what figure, and the peaks.
- the **init** (PID 1 of the new namespace): builds a private root (bubblewrap's model: a tmpfs with
  the system, the Python environment, `course_utils` and the model cache bound read-only at their
  own paths, a fresh /proc, four device files, and a size-limited scratch tmpfs as HOME and /tmp),
  pivots into it, forks the notebook process and reaps orphans. When the notebook process ends, or
  the keeper dies, the init dies and the kernel kills every process of the namespace.
- the **notebook process**: its own session; every file descriptor closed but stdin/stdout/stderr
  (on /dev/null) and the ones the caller keeps (its channel); an environment from an allow-list;
  as root, a uid of its own; every capability dropped (bounding, ambient, inheritable) and
  `no_new_privs`; setrlimit limits; Landlock over the same paths as a second layer; then `target()`.

So it can signal only its own processes, sees only its own /proc, cannot reach other students'
folders, the home folder, /run, /tmp or any pathname socket (they are not in its root), has no
network (not even loopback), and leaves nothing behind (the namespace and its tmpfs die with it).
`support()` says, per layer, what this machine cannot give.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .protocol import ready_to_read
from .watchdog import Usage, Watchdog

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 4, 24, 38, 47, 4
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
_CAP_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

SCRATCH = "/sandbox"                    # the run's private tmpfs: HOME, /tmp, the working folder
HOME = f"{SCRATCH}/home"
LAYERS = ("network", "pid", "mount", "landlock", "privileges", "limits")
# Files outside the bound folders that Python, IPython and matplotlib read.
_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts",
        "/etc/host.conf", "/etc/resolv.conf", "/etc/mime.types", "/etc/os-release", "/etc/ssl", "/etc/fonts",
        "/etc/alternatives", "/etc/matplotlibrc")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/sys/devices/system/cpu")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
# Environment names a notebook (and the worker it is forked from) may see; LC_* too.
ENV_ALLOWED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
               "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "MPLCONFIGDIR", "MPLBACKEND", "IPYTHONDIR", "XDG_CACHE_HOME",
               "XDG_CONFIG_HOME", "COURSE_CACHE", "COURSE_ONLINE", "NBGRADER_EXECUTION")


class SandboxError(RuntimeError):
    """Isolation cannot be set up on this machine; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one notebook run, all its processes together (seconds, bytes, counts)."""
    cell_seconds: float = 60.0
    notebook_seconds: float = 600.0
    memory_bytes: int = 4 << 30        # on top of what the run holds when the notebook starts
    cpu_seconds: int = 900
    processes: int = 64                # tasks of the run (threads count)
    file_bytes: int = 64 << 20         # one file (a memfd included)
    disk_bytes: int = 256 << 20        # the scratch tmpfs, all files together
    open_files: int = 256              # per process
    output_bytes: int = 1 << 20        # per cell, text and images together


@dataclasses.dataclass(frozen=True)
class Policy:
    """What one run may read (folders bound read-only), how much it may use, and which layers apply."""
    readable: tuple[str, ...]
    limits: Limits = Limits()
    isolate: bool = True               # False only with `course grade --no-sandbox`
    without: frozenset[str] = frozenset()   # layers the instructor chose to do without
    stage: str = ""                    # an empty host folder the private root is built on (isolated runs)
    workdir: str = ""                  # the working folder of an unconfined run


# ----------------------------------------------------------------------------- what may be read
def readable_paths(course_dir: str | os.PathLike, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Folders a notebook may read: system, this Python, imported packages, the course's model cache.

    Left out: any folder that contains the course, lies inside it or is an nbgrader course itself
    (the repository root is on `sys.path` in development), and the home folder or any folder that
    contains it; `course_utils` and the grader itself are always readable. Folders inside another one are dropped.
    """
    from . import layout
    course = Path(course_dir).resolve()
    home = Path.home().resolve()
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, *(p for p in sys.path if p), str(layout.cache_dir()),
                  *extra]
    keep = [layout.COURSE_UTILS, layout.PACKAGE]
    for c in candidates:
        p = Path(c).resolve()
        if (not p.is_dir() or course == p or course.is_relative_to(p) or p.is_relative_to(course)
                or home.is_relative_to(p) or (p / "nbgrader_config.py").exists()):
            continue
        keep.append(p)
    keep = sorted(set(keep), key=lambda p: len(p.parts))
    outer = [p for i, p in enumerate(keep) if not any(p.is_relative_to(q) for q in keep[:i])]
    return tuple(str(p) for p in sorted(outer))


# ----------------------------------------------------------------------------- system calls
def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what} failed: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source or ''} on {target}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def sandbox_uid(pid: int | None = None) -> int:
    """A uid no account uses, unique to a run while its keeper lives (root runs only)."""
    return 1_900_000_000 + (os.getpid() if pid is None else pid)


def is_root() -> bool:
    """Root mode: the sandbox switches to a uid of its own; otherwise a user namespace is used."""
    return os.geteuid() == 0


# ----------------------------------------------------------------------------- the keeper
@dataclasses.dataclass
class Run:
    """A started run, as the worker holds it: the keeper's pid and its report pipe."""
    pid: int
    report_fd: int

    def stop(self, grace: float = 0.0) -> dict:
        """End the run (every process of it), after `grace` seconds to end by itself; the keeper's report."""
        status, signalled = None, False
        deadline = time.monotonic() + grace
        while status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                status = st
            elif not signalled and time.monotonic() >= deadline:
                os.kill(self.pid, signal.SIGTERM)
                signalled, deadline = True, time.monotonic() + 10
            elif signalled and time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)       # the init dies with it (parent-death signal)
                _, status = os.waitpid(self.pid, 0)
            else:
                time.sleep(0.005)
        data = b""
        while chunk := _read_nonblocking(self.report_fd):
            data += chunk
        os.close(self.report_fd)
        try:
            report = json.loads(data) if data else {}
        except ValueError:
            report = {}
        report.setdefault("status", status)
        return report


def _read_nonblocking(fd: int) -> bytes:
    if not ready_to_read([fd], 0):
        return b""
    return os.read(fd, 1 << 16)


def start(policy: Policy, target, keep_fds: tuple[int, ...] = ()) -> Run:
    """Fork the run's keeper, which confines and runs `target()`; the caller closes its copies of keep_fds."""
    report_r, report_w = os.pipe()
    parent = os.getpid()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # the keeper takes it once watching
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if pid == 0:
        os.close(report_r)
        code = 70
        try:
            code = _keeper(policy, target, keep_fds, report_w, parent)
        except BaseException as e:                          # setup failed: say why, never run the target
            _write(report_w, {"error": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(code)
    os.close(report_w)
    return Run(pid, report_r)


def _write(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    while data:
        data = data[os.write(fd, data):]


class _Stop(Exception):
    pass


def _raise_stop(*_) -> None:
    raise _Stop


def _keeper(policy: Policy, target, keep_fds: tuple[int, ...], report_fd: int, parent: int) -> int:
    """Enter the namespaces, fork the init, watch the run; returns the exit code for the keeper."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PR_SET_PDEATHSIG)")   # dies with its worker
    if os.getppid() != parent:
        return 75
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uid = sandbox_uid() if is_root() else os.getuid()
    if policy.isolate:
        _new_namespaces(policy.without)
    life_r, life_w = os.pipe()
    ready_r, ready_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(report_fd)
        os.close(life_w)
        os.close(ready_r)
        try:
            _init(policy, target, keep_fds, life_r, ready_w, uid)
        finally:
            os._exit(71)
    for fd in (life_r, ready_w, *keep_fds):
        os.close(fd)
    report = _watch(policy, init, ready_r)
    _write(report_fd, report)
    return 0


def _watch(policy: Policy, init: int, ready_r: int) -> dict:
    """Sample the run until it ends, is stopped by the worker, or goes over a limit."""
    limits, interval = policy.limits, 1 / 40
    pidfd = os.pidfd_open(init)
    private = "mount" not in policy.without
    watchdog = Watchdog(init, SCRATCH if private else None) if _namespaced(policy) else None
    baseline, peak, stopped, error = None, Usage(), None, None
    samples, slowest, last = 0, 0.0, time.monotonic()
    watched = [pidfd, ready_r]
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        while True:
            ready = ready_to_read(watched, interval)
            if pidfd in ready:
                break
            if ready_r in ready:                        # the notebook process is confined (or could not be)
                said = os.read(ready_r, 4096)
                watched.remove(ready_r)
                os.close(ready_r)
                if said.startswith(b"e"):
                    error = said[1:].decode(errors="replace")
                elif said:
                    baseline = watchdog.sample(exact=True).memory_bytes if watchdog else 0
                    last = time.monotonic()
                continue
            if baseline is None:
                continue
            usage = watchdog.sample(ceiling=baseline + limits.memory_bytes) if watchdog else Usage()
            now = time.monotonic()
            samples, slowest, last = samples + 1, max(slowest, now - last), now
            held = usage.memory_bytes - baseline
            peak = Usage(max(peak.memory_bytes, held), max(peak.cpu_seconds, usage.cpu_seconds),
                         max(peak.processes, usage.processes), max(peak.disk_bytes, usage.disk_bytes))
            if held > limits.memory_bytes:
                stopped = {"limit": "memory", "figure": held, "allowed": limits.memory_bytes}
            elif usage.cpu_seconds > limits.cpu_seconds:
                stopped = {"limit": "cpu", "figure": usage.cpu_seconds, "allowed": limits.cpu_seconds}
            if stopped:
                os.kill(init, signal.SIGKILL)
                break
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(init, signal.SIGKILL)                          # PID 1 gone: the kernel ends the namespace
    if not _namespaced(policy):
        _kill_group(init)
    _, status = os.waitpid(init, 0)
    if not _namespaced(policy):
        _kill_group(init)
    os.close(pidfd)
    return {"stopped": stopped, "status": status, "setup_error": error, "peak_memory_bytes": peak.memory_bytes,
            "peak_processes": peak.processes, "cpu_seconds": peak.cpu_seconds, "disk_bytes": peak.disk_bytes,
            "disk_full": peak.disk_bytes >= policy.limits.disk_bytes - (1 << 20), "samples": samples,
            "slowest_interval": slowest, "exact_readings": watchdog.exact_readings if watchdog else 0}


def _namespaced(policy: Policy) -> bool:
    """Does the run have a PID namespace of its own (so its init's death ends all its processes)?"""
    return policy.isolate and "pid" not in policy.without


def _kill_group(leader: int) -> None:
    """Without a PID namespace: kill the run's process group (what left it is not found)."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _new_namespaces(without: frozenset[str]) -> None:
    """New PID, network, IPC and UTS namespaces (the init then enters a mount namespace of its own);
    as a normal user, all inside a new user namespace, which is what gives the init the right to mount."""
    flags = (0 if "pid" in without else CLONE_NEWPID) | (0 if "network" in without else CLONE_NEWNET)
    if not flags and "mount" in without:
        return
    flags |= CLONE_NEWIPC | CLONE_NEWUTS
    if is_root():
        _check(_libc.unshare(flags), "unshare (PID, network namespaces)")
        return
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | flags), "unshare (user, PID, network namespaces)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


# ----------------------------------------------------------------------------- the init
def _init(policy: Policy, target, keep_fds, life_r: int, ready_w: int, uid: int) -> None:
    """PID 1 of the run: build the private root, fork the notebook process, reap, die with it."""
    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)   # PID 1 ignores signals it has no handler for
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PR_SET_PDEATHSIG)")
    if ready_to_read([life_r], 0):                      # the keeper is already gone
        os._exit(72)
    os.close(life_r)
    os.setsid()
    if policy.isolate and "mount" not in policy.without:
        try:
            _private_root(policy, uid)
        except BaseException as e:
            os.write(ready_w, f"e{type(e).__name__}: {e}".encode()[:4000])
            os._exit(71)
    elif policy.isolate and is_root():
        os.chown(policy.workdir, uid, uid)                 # the run's working folder is its uid's own
    notebook = os.fork()
    if notebook == 0:
        _confined(policy, target, keep_fds, ready_w, uid)
    os.closerange(0, 1 << 20)
    code = 73
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == notebook:
            code = (128 + os.WTERMSIG(status)) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            break
    os._exit(code)                                     # the kernel now kills the rest of the namespace


def _private_root(policy: Policy, uid: int) -> None:
    """Bind what the run may read into a new tmpfs root, add /proc, /dev and the scratch, pivot into it.

    Only the init enters the new mount namespace: the keeper keeps the worker's view (and /proc).
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare (mount namespace)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    new = policy.stage
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    os.makedirs(new + SCRATCH)
    size = policy.limits.disk_bytes
    _mount("tmpfs", new + SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode=0700,size={size},nr_inodes=65536,uid={uid},gid={uid}")
    for sub in ("home", "tmp"):
        os.mkdir(f"{new}{SCRATCH}/{sub}", 0o700)
        os.chown(f"{new}{SCRATCH}/{sub}", uid, uid)
    os.mkdir(f"{new}/tmp")
    _mount(f"{new}{SCRATCH}/tmp", f"{new}/tmp", None, MS_BIND)     # before the binds: some may lie under /tmp
    for path in (*_SYSTEM, *_ETC, *policy.readable):
        _bind(path, new + path)
    for dev in _DEVICES:
        if os.path.exists(dev):
            _bind(dev, new + dev, writable=True)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
        os.symlink(to, f"{new}/dev/{name}")
    os.makedirs(new + "/proc")
    _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(new)
    if _SYS_PIVOT_ROOT is None:
        raise SandboxError(f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind(source: str, target: str, writable: bool = False) -> None:
    """Bind `source` at `target` read-only (a symlink is copied as a symlink); missing sources are skipped."""
    if os.path.islink(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(os.readlink(source), target)
        return
    if not os.path.exists(source):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "wb").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    keep = _locked_flags(source) | MS_NOSUID | (0 if writable else MS_NODEV)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | keep | (0 if writable else MS_RDONLY))


def _locked_flags(path: str) -> int:
    """Flags of the mount `path` lies on that a user namespace may not clear on a remount."""
    st = os.statvfs(path).f_flag
    pairs = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
    return sum(ms for st_flag, ms in pairs if st & st_flag)


# ----------------------------------------------------------------------------- the notebook process
def _confined(policy: Policy, target, keep_fds, ready_w: int, uid: int) -> None:
    """The notebook process: nothing inherited, no privileges, limits, Landlock; then the target."""
    private = policy.isolate and "mount" not in policy.without
    try:
        if _namespaced(policy):
            os.setsid()
        _only_fds(keep_fds, ready_w)
        workdir = HOME if private else policy.workdir
        os.chdir(workdir)
        _clean_environment(workdir, f"{SCRATCH}/tmp" if private else workdir)
        if policy.isolate:
            _drop_privileges(uid)
        _set_limits(policy.limits)
        if policy.isolate and "landlock" not in policy.without:
            _landlock(policy)
        sys.path[:] = [p for p in sys.path if p and os.path.isabs(p)]
    except BaseException as e:
        os.write(ready_w, f"e{type(e).__name__}: {e}".encode()[:4000])
        os._exit(74)
    os.write(ready_w, b"r")
    os.close(ready_w)
    code = 0
    try:
        target()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _only_fds(keep_fds: tuple[int, ...], ready_w: int) -> None:
    """stdin/stdout/stderr on /dev/null; every other descriptor closed but the ones kept."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    keep = sorted({*keep_fds, ready_w})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _clean_environment(workdir: str, tmp: str) -> None:
    """The allow-listed environment, with HOME and TMPDIR in the run's own folder."""
    kept = {k: v for k, v in os.environ.items() if k in ENV_ALLOWED or k.startswith("LC_")}
    os.environ.clear()
    os.environ.update(kept, HOME=workdir, TMPDIR=tmp, IPYTHONDIR=os.path.join(workdir, ".ipython"), MPLCONFIGDIR=workdir,
                      PYTHONDONTWRITEBYTECODE="1", NBGRADER_EXECUTION="autograde")
    tempfile.tempdir = os.environ["TMPDIR"]


def _drop_privileges(uid: int) -> None:
    """Every capability gone (bounding, ambient, inheritable, effective, permitted), no_new_privs; as root
    also a uid of its own, so no file of root or the instructor is writable and the process cap applies."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            _check(-1, "prctl(PR_CAPBSET_DROP)")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    if is_root():
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _prctl(PR_SET_DUMPABLE, 1, "prctl(PR_SET_DUMPABLE)")    # its own /proc/self stays its own
    data = (_CapData * 2)(_CapData(0, 0, 0), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def _set_limits(limits: Limits) -> None:
    """Per-process limits (the keeper sums memory and CPU over the whole run)."""
    vm = _vm_size()
    pairs = {resource.RLIMIT_AS: vm + limits.memory_bytes, resource.RLIMIT_CPU: limits.cpu_seconds,
             resource.RLIMIT_NPROC: limits.processes, resource.RLIMIT_FSIZE: limits.file_bytes,
             resource.RLIMIT_NOFILE: limits.open_files, resource.RLIMIT_CORE: 0}
    for kind, value in pairs.items():
        hard = value + 5 if kind == resource.RLIMIT_CPU else value   # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(kind, (value, hard))


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _landlock(policy: Policy) -> None:
    """Second layer: read the bound folders, read and write the scratch, the four devices, nothing else."""
    from landlock import FSAccess, Ruleset
    ctypes.set_errno(0)                    # the package reads errno, not only the return value
    ruleset = Ruleset()
    read_dir = FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
    for path in (*_SYSTEM, *_ETC, *policy.readable, "/proc"):
        if os.path.isdir(path) and not os.path.islink(path):
            ruleset.allow(path, rules=read_dir)
        elif os.path.isfile(path) and not os.path.islink(path):
            ruleset.allow(path, rules=FSAccess.READ_FILE | FSAccess.EXECUTE)
    rw = FSAccess.READ_FILE | FSAccess.WRITE_FILE
    if hasattr(FSAccess, "TRUNCATE") and FSAccess.TRUNCATE & FSAccess.all_file():
        rw |= FSAccess.TRUNCATE
    for dev in _DEVICES:
        if os.path.exists(dev):
            ruleset.allow(dev, rules=rw if dev in ("/dev/null", "/dev/zero") else FSAccess.READ_FILE)
    private = policy.isolate and "mount" not in policy.without
    for path in (SCRATCH, "/tmp") if private else (policy.workdir,):
        ruleset.allow(path, rules=FSAccess.all())
    ruleset.apply()


# ----------------------------------------------------------------------------- what this machine gives
def support(without: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """Per layer, None when this machine gives it, else what is missing (a run that tries every layer)."""
    problems: dict[str, str | None] = {layer: None for layer in LAYERS}
    if not sys.platform.startswith("linux"):
        return {layer: "Linux (the sandbox uses namespaces and Landlock)" for layer in LAYERS}
    try:
        import landlock
        if landlock.landlock_abi_version() < 1:
            problems["landlock"] = "Landlock in the kernel (Linux 5.13+ with lsm=...,landlock)"
    except ImportError:
        problems["landlock"] = "the Python package 'landlock' (pip install landlock==1.0.0.dev5)"
    except OSError as e:
        problems["landlock"] = f"Landlock in the kernel ({e}); enable it with the boot option lsm=...,landlock"
    skip = without | {k for k, v in problems.items() if v}
    stage = tempfile.mkdtemp(prefix="course-sandbox-probe-")
    try:
        report = _probe(Policy(readable=(), limits=Limits(memory_bytes=256 << 20), stage=stage,
                               without=frozenset(skip)))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if report.get("error"):
        why = report["error"]
        hint = "" if is_root() else " (unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1 " \
                                    "and user.max_user_namespaces > 0)"
        for layer in ("network", "pid", "mount"):
            if layer not in skip:
                problems[layer] = f"{why}{hint}"
    elif report.get("setup_error"):
        why = report["setup_error"]
        layer = "mount" if "mount" in why or "pivot_root" in why else "landlock" if "andlock" in why else "privileges"
        problems[layer] = why
    elif report.get("code") != 0:
        problems["privileges"] = f"the confined process could not drop its privileges (exit {report.get('code')})"
    return problems


def _probe(policy: Policy) -> dict:
    run = start(policy, lambda: None)
    report = run.stop(grace=30)
    status = report.get("status", 0)
    report["code"] = os.waitstatus_to_exitcode(status) if isinstance(status, int) else status
    return report


def describe(problems: dict[str, str | None], without: frozenset[str] = frozenset()) -> str:
    """One line per layer for `course grade`: what is active on this machine and how."""
    how = {"network": "own network namespace (no interface up)",
           "pid": "own PID namespace and /proc (its processes end with the run)",
           "mount": "private root: system, environment, course_utils, model cache read-only; tmpfs scratch",
           "landlock": "Landlock file rules (second layer)",
           "privileges": ("a uid of its own, no capabilities, no_new_privs" if is_root()
                          else "user namespace, no capabilities, no_new_privs"),
           "limits": "per notebook: memory (all processes, memfd, tmpfs) and CPU summed 40x/s; "
                     "processes, file size, disk, wall time, output"}
    lines = []
    for layer in LAYERS:
        state = "off (--without)" if layer in without else ("MISSING: " + problems[layer] if problems[layer]
                                                             else "on")
        lines.append(f"  {layer:<10} {state}" + ("" if problems[layer] or layer in without else f"  - {how[layer]}"))
    return "\n".join(lines)
