"""Grading on a Dask cluster: each Dask worker keeps one warm grading worker, paid once per Dask worker.

`course grade --scheduler ADDRESS` registers `WarmWorkerPlugin` at the start of each call; its
`setup` starts (or finds) the Dask worker's grading worker with the assignment's modules warm
(`grader.worker.warm_here`), while the call still prepares its jobs. Registering it again on the next
call finds the grading worker running and changes nothing (`teardown` leaves it: it ends with the
Dask worker's process); modules a later lesson needs are imported by the job's control frame.
"""
from __future__ import annotations

import threading

from distributed.diagnostics.plugin import WorkerPlugin

from . import warm


class WarmWorkerPlugin(WorkerPlugin):
    """Start this Dask worker's grading worker with these modules warm, in the background."""
    name = "course-grade-warm"

    def __init__(self, threads: int, modules: tuple[str, ...]):
        self.threads, self.modules = int(threads), warm.checked(modules)

    def setup(self, worker) -> None:
        from .worker import warm_here
        threading.Thread(target=self._warm, args=(warm_here,), name="course-grade-warm", daemon=True).start()

    def _warm(self, warm_here) -> None:
        try:
            warm_here(self.threads, self.modules)
        except Exception:             # the first task starts it again and reports the failure per job
            pass

    def teardown(self, worker) -> None:
        """Nothing: the grading worker stays warm for the next call and ends with this process."""
