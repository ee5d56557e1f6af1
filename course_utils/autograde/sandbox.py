"""Confine the process that runs one student notebook: what it can read, write, reach and use.

`confine(policy)` is called in a freshly forked child, before any student code runs, and cannot be
undone by it. Layers, each checked by `support()` before grading starts:
- **network**: a new, empty network namespace (only a loopback that is down);
- **files** (Landlock): read-only access to the system, the Python environment and the course's
  cached model and data; read-write access to one private working folder; nothing else, so the
  course folder, the gradebook, other students' work and the solutions can be neither read nor written;
- **identity**: as root, the child switches to a uid of its own that keeps only the right to read
  files (Landlock decides which), so the kernel's process cap applies and no root-owned file is
  writable; as a normal user it enters a user namespace instead;
- **limits** (setrlimit): address space, CPU seconds, processes, file size, open files, no core dumps.
What it does not do: code in the student's own process can still patch that process (the static
scan in `scan.py` flags that), and CPU is shared fairly only through the CPU-time limit.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import resource
import sys
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
PR_SET_KEEPCAPS, PR_SET_PDEATHSIG, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 1, 47, 2
CAP_DAC_READ_SEARCH = 2
_CAP_VERSION_3 = 0x20080522
# Files outside the read-only folders that a Python process reads at start-up or on import.
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
              "/etc/hosts", "/etc/host.conf", "/etc/resolv.conf", "/etc/mime.types", "/etc/os-release")
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ssl", "/etc/fonts",
                "/etc/alternatives", "/proc", "/sys/devices/system/cpu", "/sys/fs/cgroup")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class SandboxError(RuntimeError):
    """Isolation cannot be set up on this machine; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one notebook run (seconds, bytes, counts)."""
    cell_seconds: float = 60.0
    notebook_seconds: float = 600.0
    memory_bytes: int = 4 << 30        # address space on top of what the forked child starts with
    cpu_seconds: int = 900
    processes: int = 64                # tasks of the sandbox uid (threads count)
    file_bytes: int = 64 << 20
    open_files: int = 256
    output_bytes: int = 1 << 20        # per cell, text and images together


@dataclasses.dataclass(frozen=True)
class Policy:
    """What one sandboxed run may touch: a private folder (read-write) and read-only folders."""
    workdir: str
    readable: tuple[str, ...]
    limits: Limits = Limits()
    isolate: bool = True               # False only with `course grade --no-sandbox`


def readable_paths(course_dir: str | os.PathLike, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Folders a notebook may read: system, this Python, imported packages, the course cache.

    Any folder that contains the course directory, or is itself an nbgrader course (the repository
    root is on `sys.path` in development), is left out, so the gradebook, submissions and solutions
    stay unreadable; `course_utils` itself is always readable.
    """
    import course_utils
    from course_utils.data import cache_dir
    course = Path(course_dir).resolve()
    candidates = [*_SYSTEM_DIRS, sys.prefix, sys.base_prefix, sys.exec_prefix,
                  *(p for p in sys.path if p), str(Path(course_utils.__file__).parent), str(cache_dir()),
                  *extra]
    keep = []
    for c in candidates:
        p = Path(c).resolve()
        if (not p.is_dir() or course == p or course.is_relative_to(p) or p.is_relative_to(course)
                or (p / "nbgrader_config.py").exists()):
            continue
        keep.append(str(p))
    keep.append(str(Path(course_utils.__file__).parent.resolve()))  # even when it lives in the course
    return tuple(dict.fromkeys(keep))


def support() -> list[str]:
    """What this machine lacks for sandboxed grading (empty when everything is there)."""
    missing = []
    if not sys.platform.startswith("linux"):
        return ["Linux (the sandbox uses Landlock and namespaces)"]
    try:
        import landlock
        if landlock.landlock_abi_version() < 1:
            missing.append("Landlock in the kernel (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK and lsm=landlock)")
    except ImportError:
        missing.append("the Python package 'landlock' (pip install landlock==1.0.0.dev5)")
    except OSError as e:
        missing.append(f"Landlock in the kernel ({e}); enable it with the boot option lsm=...,landlock")
    if not _probe_namespaces():
        missing.append("network namespaces (root, or unprivileged user namespaces: "
                       "sysctl kernel.unprivileged_userns_clone=1)")
    return missing


def _probe_namespaces() -> bool:
    """Can a child process enter a new network namespace here?"""
    pid = os.fork()
    if pid == 0:
        try:
            _new_namespaces()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what} failed: {os.strerror(err)}")


def _new_namespaces() -> None:
    """A new network namespace; as a normal user, inside a user namespace that maps only ourselves."""
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER | CLONE_NEWNET)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def sandbox_uid(pid: int | None = None) -> int:
    """A uid no account uses, unique to a process while it lives (root runs only)."""
    return 1_900_000_000 + (os.getpid() if pid is None else pid)


def _drop_root(uid: int) -> None:
    """Become `uid`, keeping only CAP_DAC_READ_SEARCH (reads stay possible; Landlock limits them)."""
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    bit = 1 << CAP_DAC_READ_SEARCH
    data = (_CapData * 2)(_CapData(bit, bit, bit), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data), "capset")
    # Programs the notebook starts (a `!` command) keep the same reading right.
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0), "prctl(PR_CAP_AMBIENT)")


def _set_limits(limits: Limits) -> None:
    """Resource limits; the address-space limit counts from what the child already maps."""
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
    """Allow reading the policy's folders, reading and writing the workdir, and nothing else."""
    from landlock import FSAccess, Ruleset
    ruleset = Ruleset()
    read_dir = FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
    read_file = FSAccess.READ_FILE | FSAccess.EXECUTE
    for path in policy.readable:
        if os.path.isdir(path):
            ruleset.allow(path, rules=read_dir)
    for path in _ETC_FILES:
        if os.path.isfile(path):
            ruleset.allow(path, rules=read_file)
    null = FSAccess.READ_FILE | FSAccess.WRITE_FILE
    if hasattr(FSAccess, "TRUNCATE") and FSAccess.TRUNCATE & FSAccess.all_file():
        null |= FSAccess.TRUNCATE
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        if os.path.exists(dev):
            ruleset.allow(dev, rules=null if dev in ("/dev/null", "/dev/zero") else FSAccess.READ_FILE)
    ruleset.allow(policy.workdir, rules=FSAccess.all())
    ruleset.apply()


def confine(policy: Policy) -> None:
    """Apply every layer to the calling process (a fresh fork); irreversible."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # dies with its worker
    os.setsid()
    if not policy.isolate:
        _set_limits(policy.limits)
        return
    _new_namespaces()
    if os.geteuid() == 0:
        uid = sandbox_uid()
        os.chown(policy.workdir, uid, uid)
        _drop_root(uid)
    _set_limits(policy.limits)
    _landlock(policy)
