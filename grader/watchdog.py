"""Per-notebook limits that no single process limit can give: what all of a run's processes hold together.

A notebook can fork, and each child gets its own address-space and CPU limits; it can also keep
memory in `memfd` files and in its scratch tmpfs, which no process maps. The run's keeper (outside
the run's PID namespace) samples a `Watchdog` 40 times a second and stops the run when the sum is over:
- memory: the proportional set size (pages shared by n processes count 1/n) of every process of the
  namespace, plus every `memfd` file they hold open (once, by inode), plus the pages of the scratch
  tmpfs. Reading a process's proportional size (`smaps_rollup`) walks its page tables: 15 to 60 ms
  for a process that has torch imported, far too slow for every process at every sample. So a
  sample reads O(1) counters instead: each process's last exact reading plus the growth of its
  resident anonymous and shared-memory pages since (fresh pages: how memory is allocated fast),
  which is over the limit only if the run is. Pages copied on write from the worker's are
  invisible to those counters, so an upper bound adds minor page faults times the page size;
  when only that bound is over the limit, each sample also reads exactly the one process with the
  largest unverified growth (never more, so a sample never waits for many page-table walks), and
  the sum counts every exact reading done so far. (A thread cannot do the readings: the keeper has
  entered a PID namespace for its children, and Linux then refuses it new threads.)
- CPU: user and system seconds of every process of the namespace, its reaped children included.
Processes are found through the namespace's own /proc, seen from outside through its init's root,
so a process that double-forks or calls `setsid` is still counted.
"""
from __future__ import annotations

import dataclasses
import os

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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
    faults: int            # minor page faults at that reading
    fresh: int = 0         # growth of the counters since, at the latest sample
    bound: int = 0         # exact + the most it can have grown since, at the latest sample


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
        self.exact_readings = 0

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

    def sample(self, exact: bool = False, ceiling: int | None = None) -> Usage:
        """Sum over the namespace now, every process read exactly (`exact`) or from its counters; when
        only the upper bound is over `ceiling` bytes, one process (the least verified) is read exactly."""
        usage, memfds = Usage(), {}
        try:
            pids = self._pids()
        except OSError:
            return usage
        current, reads = {}, []
        for pid in pids:
            base = f"{self.proc}/{pid}"
            stat, counters = _stat(base), _counters(base)
            if stat is None or counters is None:
                continue                              # ended between the listing and the reads
            start, cpu, faults = stat
            reads.append((pid, start, counters, faults))
            usage.processes += 1
            usage.cpu_seconds += cpu
            _memfds(base, memfds)
        for pid, start, counters, faults in reads:
            seen = self.seen.get(pid)
            if seen is None or seen.start != start:
                seen = _Seen(start, 0, counters, faults)  # its pages at birth are its parent's
            seen.fresh = max(0, counters - seen.counters)
            seen.bound = seen.exact + max(seen.fresh, (faults - seen.faults) * _PAGE)
            current[pid] = seen
        self.seen = current
        usage.disk_bytes = _tmpfs_used(self.scratch) if self.scratch else 0
        outside = sum(memfds.values()) + usage.disk_bytes
        usage.memory_bytes = outside + sum(s.exact + s.fresh for s in current.values())
        bound = outside + sum(s.bound for s in current.values())
        by_growth = sorted(current, key=lambda p: current[p].exact - current[p].bound)
        if exact:
            for pid in by_growth:
                bound += self._read_exactly(pid)
            usage.memory_bytes = bound
        elif ceiling is not None and usage.memory_bytes <= ceiling < bound:
            usage.memory_bytes += self._read_exactly(by_growth[0], fresh=True)   # maybe over it: read one
        return usage

    def _read_exactly(self, pid: str, fresh: bool = False) -> int:
        """Read one process's proportional size; returns how much that changed the sum (of the
        counter-based sum with `fresh`, else of the upper bound)."""
        base = f"{self.proc}/{pid}"
        stat, counters, pss = _stat(base), _counters(base), _pss(base)
        seen = self.seen.get(pid)
        if stat is None or counters is None or pss is None or seen is None or seen.start != stat[0]:
            return 0
        self.exact_readings += 1
        before = seen.exact + seen.fresh if fresh else seen.bound
        seen.exact, seen.counters, seen.faults, seen.fresh, seen.bound = pss, counters, stat[2], 0, pss
        return pss - before


def _stat(base: str) -> tuple[bytes, float, int] | None:
    """(start time, CPU seconds with reaped children, minor faults) of a process, or None if it is gone."""
    try:
        with open(f"{base}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state(0) ... minflt(7) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
    return fields[19], sum(int(x) for x in fields[11:15]) / _TICKS, int(fields[7])


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
