"""Tripwires in the student's process: an audit hook that records suspicious acts for a person to review.

Runs in the notebook process, next to the student's code, so it is no defence: code that has read
this file can avoid it, or find it in memory and wipe what it holds. It is a record of acts that no
honest lesson does, each a plain-language flag with the cell it came from; the verdict is taken
elsewhere. `install(channel_fds)` adds the hook (`sys.addaudithook`, PEP 578: it cannot be removed)
just before the first student cell; set `tripwire.cell` before each cell, read `tripwire.flags()`.

What is flagged, and the audit events it comes from:
- the grader's channel: opening its descriptor (`open`: open(fd), os.fdopen, io.FileIO, or a path
  /proc/self/fd/N, /dev/fd/N), or acting on it (`fcntl.*`, `os.lockf`, `os.truncate`, `os.chmod`,
  `os.chown`, `os.utime`, `os.listdir`, `os.scandir`, `mmap.__new__`);
- the interpreter's tracing and exception machinery: `sys.settrace` (threading.settrace, pdb and
  breakpoint() call it too), `sys.setprofile`, `sys._current_frames`, `sys._current_exceptions`,
  `sys.addaudithook`, a function's `__code__` replaced (`object.__setattr__`), `gc.get_objects`,
  `gc.get_referrers`;
- ctypes: `ctypes.dlopen`, `ctypes.dlsym`, `ctypes.dlsym/handle` (but the libraries in `LIBRARIES`,
  which torch.cuda probes), raw memory (`ctypes.string_at`, `ctypes.wstring_at`, `ctypes.cdata`,
  `ctypes.PyObj_FromPtr`, `ctypes.call_function`);
- /proc (`open`, `os.listdir`, `os.scandir`, `os.chdir`, `os.symlink`, and commands started by
  `subprocess.Popen`, `os.system`, `os.exec`, `os.posix_spawn`, `os.spawn` that name it): another
  process's entries, any of its own but the status files in `OWN_READABLE`, a system entry not in
  `SYSTEM_READABLE`, any write, and listing /proc. (The interpreter puts the text a path object's
  __fspath__ gave in the event; an object of the student's own type is flagged as unknown, never asked.)

Blind spots: os.write, os.read, os.dup, os.dup2, os.fstat and os.readlink raise no audit event in
Python 3.11 (writing to the channel is for the examiner to notice); C code (a library's own
fopen) is not audited; a forked child's flags stay in the child. Honest lessons raise none of these
flags (tests/test_grader_tripwire.py runs them).

Cost (benchmarks/tripwire.py): an event the hook does not examine costs what calling any Python
audit hook costs, about 0.16 microseconds; an examined one 0.5 to 1, a path under /proc 2 to 3. A
lesson raises 4,000 to 150,000 events, mostly `builtins.id`: some 30 ms at most, below the noise
of timing a lesson.
"""
from __future__ import annotations

import _thread
import ctypes
import os
import pathlib
import sys
from collections.abc import Collection
from types import FunctionType

MAX_FLAGS = 64          # distinct (cell, act) pairs kept; more are counted in a last flag
MAX_EXAMPLES = 3        # distinct details shown per flag (paths, descriptors, libraries)
MAX_DETAIL = 120        # characters of one detail
_MAX_DEPTH = 4          # events raised while the hook runs (a signal handler, say) are examined this deep

# /proc entries honest libraries read: of the process itself (also per thread, under task/<tid>) and of the system.
OWN_READABLE = frozenset({"stat", "statm", "status", "cgroup", "cpuset", "limits", "mountinfo", "mounts", "sched",
                          "schedstat", "io", "comm", "cmdline", "oom_score", "oom_score_adj", "smaps_rollup"})
SYSTEM_READABLE = frozenset({"cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version", "filesystems", "mounts",
                             "swaps", "cgroups", "pressure", "sys"})
_PATHLIB = frozenset({pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.Path,
                      pathlib.PosixPath, pathlib.WindowsPath})
_CTYPES_LIBRARIES = frozenset({ctypes.CDLL, ctypes.PyDLL})
_STANDARD = {"/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"}
_WRITING = os.O_TRUNC | os.O_APPEND | os.O_CREAT
_FD_EVENTS = ("fcntl.fcntl", "fcntl.ioctl", "fcntl.flock", "fcntl.lockf", "os.lockf", "os.truncate", "os.chmod",
              "os.chown", "os.utime", "mmap.__new__")
_PLAIN = {
    "sys.settrace": "set a trace function (sys.settrace; debuggers such as pdb and breakpoint() do too)",
    "sys.setprofile": "set a profile function (sys.setprofile)",
    "sys._current_frames": "read every thread's running frame (sys._current_frames)",
    "sys._current_exceptions": "read every thread's current exception (sys._current_exceptions)",
    "sys.addaudithook": "added an audit hook (sys.addaudithook)",
    "gc.get_objects": "walked every object in memory (gc.get_objects)",
    "gc.get_referrers": "looked for what refers to an object (gc.get_referrers)",
    "ctypes.string_at": "read raw memory with ctypes (ctypes.string_at)",
    "ctypes.wstring_at": "read raw memory with ctypes (ctypes.wstring_at)",
    "ctypes.cdata": "read raw memory with ctypes (from_address)",
    "ctypes.PyObj_FromPtr": "made an object from a memory address with ctypes (PyObj_FromPtr)",
    "ctypes.call_function": "called a C function by its address (ctypes.call_function)",
}
# Libraries honest code loads with ctypes after the worker's imports, with the prefix of the symbols it looks up:
# torch.cuda.device_count() (and pynvml, spacy's import) probe NVIDIA's management library.
LIBRARIES = {"libnvidia-ml.so.1": "nvml"}
_COMMANDS = {"subprocess.Popen": 1, "os.system": 0, "os.exec": 1, "os.posix_spawn": 1, "os.spawn": 2}


def install(channel_fds: Collection[int] = ()) -> "Tripwire":
    """Add the audit hook to this process (for good) and return what it records; call it once."""
    tripwire = Tripwire(channel_fds)
    sys.addaudithook(tripwire.hook)
    return tripwire


class Tripwire:
    """What the audit hook recorded; `cell` is the label of the running cell, set by the caller."""

    def __init__(self, channel_fds: Collection[int] = ()):
        fds = list(channel_fds)
        if not all(type(fd) is int and fd >= 0 for fd in fds):
            raise TypeError(f"channel_fds must be file descriptors (ints >= 0), not {fds!r}")
        self.cell: object = None
        self._channel = frozenset(fds)
        self._records: dict[tuple, list] = {}       # (cell, what) -> [details, count, more details than shown]
        self._dropped = 0
        self._checks = {"open": self._open, "os.listdir": self._listing, "os.scandir": self._listing,
                        "os.chdir": self._chdir, "os.symlink": self._symlink, "object.__setattr__": self._setattr,
                        "ctypes.dlopen": self._dlopen, "ctypes.dlsym": self._dlsym, "ctypes.dlsym/handle": self._dlsym,
                        **{event: self._descriptor for event in _FD_EVENTS},
                        **{event: self._command for event in _COMMANDS}}
        for event, what in _PLAIN.items():
            self._checks[event] = lambda event, args, what=what: (what, None)
        self.hook = self._make_hook()                  # the audit hook itself: install() adds it

    def flags(self) -> list[str]:
        """The acts recorded so far, one line each: `cell 7: set a profile function (sys.setprofile)`."""
        lines = []
        for (cell, what), (details, count, more) in list(self._records.items()):
            where = "before the first cell" if cell is None else f"cell {cell}"
            shown = "; ".join(details) + (" and others" if more else "")
            times = f" ({count:,} times)" if count > 1 else ""
            lines.append(f"{where}: {what}" + (f": {shown}" if shown else "") + times)
        if self._dropped:
            lines.append(f"{self._dropped:,} more suspicious acts were not kept (at most {MAX_FLAGS} are)")
        return lines

    # ------------------------------------------------------------------------- the hook
    def _make_hook(self):
        """The audit hook: one dict lookup for events it does not examine; never raises an error of its own."""
        check_for = self._checks.get
        depth: dict[int, int] = {}
        ident = _thread.get_ident
        record = self._record

        def hook(event, args):
            try:
                if type(event) is not str:           # the interpreter's events are; sys.audit's may not be
                    return
                check = check_for(event)
                if check is None:
                    return
                me = ident()
                level = depth.get(me, 0)
                if level >= _MAX_DEPTH:
                    return
                depth[me] = level + 1
                try:
                    found = check(event, args)
                    if found is not None:
                        record(*found)
                finally:
                    if level:
                        depth[me] = level
                    else:
                        depth.pop(me, None)
            except Exception as e:               # a bug here, or arguments built to break it: say so, never raise
                try:
                    record("the grader's tripwire could not examine an event",
                           f"{_text(event)}: {type(e).__name__}")
                except Exception:
                    pass
        return hook

    def _record(self, what: str, detail: str | None) -> None:
        key = (self.cell, what)
        entry = self._records.get(key)
        if entry is None:
            if len(self._records) >= MAX_FLAGS:
                self._dropped += 1
                return
            entry = self._records[key] = [[], 0, False]
        entry[1] += 1
        if detail is not None and detail not in entry[0]:
            if len(entry[0]) < MAX_EXAMPLES:
                entry[0].append(detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "...")
            else:
                entry[2] = True

    # ------------------------------------------------------------------------- the checks: (what, detail) or None
    def _open(self, event, args):
        path = _path(args[0])
        if type(path) is int:
            return self._fd(path, "open() or os.fdopen()")
        if path is None:
            return ("opened a file named by an object of its own type (what it named is not known)",
                    _type_name(args[0]))
        flags = args[2] if len(args) > 2 else None
        write = type(flags) is int and bool(flags & os.O_ACCMODE or flags & _WRITING)
        return self._proc(path, "wrote to" if write else "opened", write)

    def _listing(self, event, args):
        path = _path(args[0]) if args else None
        if type(path) is int:
            return self._fd(path, event)
        return None if path is None else self._proc(path, "listed", False, listing=True)

    def _chdir(self, event, args):
        path = _path(args[0])
        if type(path) is str and _in_proc(path):
            return "changed directory into /proc", _text(path)
        return None

    def _symlink(self, event, args):
        target = _path(args[0])
        if type(target) is str and target.startswith("/") and _in_proc(target):
            return "made a link to /proc", f"{_text(target)} -> {_text(_path(args[1]))}"
        return None

    def _descriptor(self, event, args):
        fd = _path(args[0]) if args else None
        return self._fd(fd, event) if type(fd) is int else None

    def _fd(self, fd: int, how: str):
        if fd in self._channel:
            return "opened the grader's channel" if how.startswith("open") else "used the grader's channel", \
                f"descriptor {fd} by {how}"
        return None

    def _setattr(self, event, args):
        if type(args[0]) is FunctionType and type(args[1]) is str and args[1] == "__code__":
            return "replaced a function's code (__code__)", _text(args[0].__qualname__)
        return None

    def _dlopen(self, event, args):
        name = args[0] if args else None
        if type(name) is str and name in LIBRARIES:
            return None
        return "loaded a C library with ctypes", "the program itself (CDLL(None))" if name is None else _text(name)

    def _dlsym(self, event, args):
        library, name = (args[0], args[1]) if len(args) > 1 else (None, None)
        if type(library) in _CTYPES_LIBRARIES and type(name) is str:
            loaded = library.__dict__.get("_name")              # an exact CDLL: no method of the student's runs
            prefix = LIBRARIES.get(loaded) if type(loaded) is str else None
            if prefix and name.startswith(prefix):              # never a libc name found through the library
                return None
        return "looked up a C function with ctypes", _text(name)

    def _command(self, event, args):
        command = args[_COMMANDS[event]] if len(args) > _COMMANDS[event] else None
        words = list(command) if type(command) in (list, tuple) else [command]
        text = " ".join(_text(w) for w in words if issubclass(type(w), (str, bytes)))
        if "/proc" in text or "/dev/fd" in text:
            return "ran a command that names /proc", text
        return None

    def _proc(self, path: str, verb: str, write: bool, listing: bool = False):
        """(what, path) for a /proc path honest code does not use, else None."""
        if "proc" not in path and not path.startswith("/dev/"):
            return None                                  # nearly every open: no further cost
        full = _resolve(path)
        if not (full == "/proc" or full.startswith("/proc/")):
            return None
        parts = full.split("/")[2:]
        if not parts:
            return f"{verb} /proc itself", _text(path)
        if parts[0] in ("self", "thread-self") or parts[0] == str(os.getpid()):
            rest = parts[2:] if parts[0] == "thread-self" else parts[1:]
            if rest[:1] == ["task"] and len(rest) > 1:
                rest = rest[2:]                          # a thread's entries are the process's
            if len(rest) == 2 and rest[0] in ("fd", "fdinfo") and rest[1].isdigit() and int(rest[1]) in self._channel:
                return "opened the grader's channel", f"descriptor {int(rest[1])} through {_text(path)}"
            if not write and (len(rest) == 1 and rest[0] in OWN_READABLE or listing and rest == ["task"]):
                return None
            return f"{verb} its own /proc entries", _text(path)
        if parts[0].isdigit():
            return f"{verb} another process's /proc entries", _text(path)
        if not write and parts[0] in SYSTEM_READABLE:
            return None
        return f"{verb} a system entry of /proc", _text(path)


# ----------------------------------------------------------------------------- helpers (none runs student code)
def _path(obj):
    """A path argument as text, a descriptor as an int, None for an object of the student's own type."""
    kind = type(obj)
    if kind is str or kind is int:
        return obj
    if kind is bytes:
        return os.fsdecode(obj)
    if kind in _PATHLIB:
        return str(obj)                                  # pathlib's own __str__: the text the call used
    if kind is os.DirEntry:
        return obj.path
    if issubclass(kind, str):                           # the call used the characters, not the methods
        return str.__str__(obj)
    if issubclass(kind, bytes):
        return os.fsdecode(bytes(memoryview(obj)))
    if issubclass(kind, int):
        return int.__int__(obj)
    return None


def _resolve(path: str) -> str:
    """The absolute, normalised path, /dev/fd and /dev/std* spelt as their /proc/self/fd targets."""
    if not path.startswith("/"):
        try:
            path = os.path.join(os.getcwd(), path)
        except OSError:                                  # the working folder is gone: judge the path as given
            pass
    path = os.path.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/dev/fd" or path.startswith("/dev/fd/"):
        return "/proc/self/fd" + path[len("/dev/fd"):]
    return _STANDARD.get(path, path)


def _in_proc(path: str) -> bool:
    full = _resolve(path)
    return full == "/proc" or full.startswith("/proc/")


def _text(value) -> str:
    """A short, printable form of an argument: text, a path, a number, else the name of its type."""
    shown = _path(value)
    if type(shown) is int:
        return str(shown)
    if shown is None:
        return _type_name(value)
    shown = shown[:MAX_DETAIL]
    return shown if shown.isprintable() else ascii(shown)


def _type_name(value) -> str:
    name = type.__dict__["__name__"].__get__(type(value))    # a metaclass's own __name__ does not run
    return f"an object of type {_text(name)[:60]}"
