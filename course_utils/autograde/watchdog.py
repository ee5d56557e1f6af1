"""Per-notebook limits that no single process limit can give: what all of a run's processes hold together.

A notebook can fork, and each child gets its own address-space and CPU limits; it can also keep
memory in `memfd` files and in its scratch tmpfs, which no process maps. The run's keeper (outside
the run's PID namespace) samples a `Watchdog` 40 times a second and stops the run when the sum is over:
- memory: the proportional set size (pages shared by n processes count 1/n) of every process of the
  namespace, plus every `memfd` file they hold open (once, by inode), plus the pages of the scratch
  tmpfs. Reading a process's proportional size (`smaps_rollup`) walks its page tables, about 15 ms
  for a process that has torch imported, too slow for every process at every sample; so each
  sample reads the kernel's O(1) counters of resident anonymous and shared-memory pages, and adds
  their growth since the process's last exact reading to that reading. Fresh pages (how memory is
  allocated fast) show in the counters at once; pages copied on write from the worker's, which the
  counters cannot see, are caught by exact readings taken in turn, at most 10 a second.
- CPU: user and system seconds of every process of the namespace, its reaped children included.
Processes are found through the namespace's own /proc, seen from outside through its init's root,
so a process that double-forks or calls `setsid` is still counted.
"""
from __future__ import annotations

import dataclasses
import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")
EXACT_EVERY = 0.1          # seconds between two exact (page-table walking) readings


@dataclasses.dataclass
class Usage:
    """One sample of a run: bytes held, CPU seconds used, processes alive, scratch bytes used."""
    memory_bytes: int = 0
    cpu_seconds: float = 0.0
    processes: int = 0
    disk_bytes: int = 0


@dataclasses.dataclass
class _Seen:
    start: bytes           # the process's start time: a reused pid is a new process
    exact: int             # proportional set size at the last exact reading (0 before the first)
    counters: int          # resident anonymous + shared-memory bytes at that reading
    at: float              # when


class Watchdog:
    """The usage of every process in the PID namespace whose init is `init_pid` (a host pid).

    With `scratch` (the run has a private root with a tmpfs there), the namespace's own /proc is read;
    without, the host's /proc, keeping the processes of that namespace.
    """

    def __init__(self, init_pid: int, scratch: str | None):
        self.proc = f"/proc/{init_pid}/root/proc" if scratch else "/proc"
        self.scratch = f"/proc/{init_pid}/root{scratch}" if scratch else None
        self.namespace = None if scratch else os.stat(f"/proc/{init_pid}/ns/pid").st_ino
        self.seen: dict[str, _Seen] = {}
        self.last_exact = 0.0

    def _pids(self) -> list[str]:
        pids = [p for p in os.listdir(self.proc) if p.isdigit()]
        if self.namespace is None:
            return pids
        mine = []
        for pid in pids:
            try:
                if os.stat(f"/proc/{pid}/ns/pid").st_ino == self.namespace:
                    mine.append(pid)
            except OSError:
                pass
        return mine

    def sample(self, exact: bool = False) -> Usage:
        """Sum over the namespace now; `exact=True` reads every process's proportional size."""
        usage, memfds = Usage(), {}
        try:
            pids = self._pids()
        except OSError:
            return usage
        now, current = time.monotonic(), {}
        for pid in pids:
            base = f"{self.proc}/{pid}"
            stat = _stat(base)
            counters = _counters(base)
            if stat is None or counters is None:
                continue                              # ended between the listing and the reads
            start, cpu = stat
            seen = self.seen.get(pid)
            if seen is None or seen.start != start:
                seen = _Seen(start, 0, counters, now)     # its pages at birth are its parent's
            current[pid] = seen
            usage.processes += 1
            usage.cpu_seconds += cpu
            usage.memory_bytes += seen.exact + max(0, counters - seen.counters)
            _memfds(base, memfds)
        self.seen = current
        if exact or now - self.last_exact >= EXACT_EVERY:
            usage.memory_bytes += self._refresh(exact, now)
        usage.disk_bytes = _tmpfs_used(self.scratch) if self.scratch else 0
        usage.memory_bytes += sum(memfds.values()) + usage.disk_bytes
        return usage

    def _refresh(self, every: bool, now: float) -> int:
        """Exact readings (all, or the stalest process's); returns how much they changed the sum."""
        self.last_exact = now
        pids = list(self.seen) if every else sorted(self.seen, key=lambda p: self.seen[p].at)[:1]
        change = 0
        for pid in pids:
            seen, base = self.seen[pid], f"{self.proc}/{pid}"
            before = seen.exact + max(0, (_counters(base) or seen.counters) - seen.counters)
            counters, pss = _counters(base), _pss(base)
            if counters is None or pss is None:
                continue
            self.seen[pid] = _Seen(seen.start, pss, counters, now)
            change += pss - before
        return change


def _stat(base: str) -> tuple[bytes, float] | None:
    """(start time, CPU seconds with reaped children) of a process, or None if it is gone."""
    try:
        with open(f"{base}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
    return fields[19], sum(int(x) for x in fields[11:15]) / _TICKS


def _counters(base: str) -> int | None:
    """Resident anonymous + shared-memory bytes (the kernel's counters, read in O(1)), or None if gone."""
    total, found = 0, 0
    try:
        with open(f"{base}/status", "rb") as f:
            for line in f:
                if line.startswith((b"RssAnon:", b"RssShmem:")):
                    total += int(line.split()[1]) * 1024
                    found += 1
    except (OSError, ValueError):
        return None
    return total if found else 0                   # a zombie has no such lines


def _pss(base: str) -> int | None:
    try:
        with open(f"{base}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return 0                                       # a zombie: no memory left


def _memfds(base: str, seen: dict[int, int]) -> None:
    """Add the memfd files this process holds open (inode -> bytes)."""
    try:
        entries = os.listdir(f"{base}/fd")
    except OSError:
        return
    for fd in entries:
        path = f"{base}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:
            continue
        seen[st.st_ino] = st.st_blocks * 512


def _tmpfs_used(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize
