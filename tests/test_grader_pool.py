"""The warm pool (grader/pool.py): who may reach it, when it is replaced, and that it changes no score.

Each test starts pools in a folder of its own (COURSE_POOL_DIR) and stops them at the end. Pools are
real: a `python -m grader.pool` process with real workers, leased over its Unix socket.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader import pool, warm
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "02_forward_hooks"
KINDS = ("correct", "partly", "blank")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A private pool folder for this test; whatever pool runs there is stopped afterwards."""
    where = tmp_path / "pool"
    monkeypatch.setenv(pool.DIR_ENV, str(where))
    yield where
    pool.stop(where)


def small_pool(key: str = "test-key") -> Path:
    """A pool of one worker that warms only what every run needs (ready in about a second)."""
    return pool.ensure_pool(key, workers=1, threads=1, modules=warm.BASE, idle_minutes=5, log=lambda m: None)


def wait_ready(where: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = pool.status(where)
        if info and info.get("workers") and all(w["ready"] for w in info["workers"]):
            return info
        time.sleep(0.1)
    raise AssertionError(f"the pool's workers were not ready within {timeout} s: {pool.status(where)}")


def in_child(become, action) -> dict:
    """`action()` in a forked child after `become()`; what it returned or raised, as a dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = {}
        try:
            become()
            result = {"answer": action()}
        except OSError as e:
            result = {"error": type(e).__name__}
        except BaseException as e:          # noqa: BLE001 - report anything to the parent
            result = {"error": repr(e)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def connect_as_child(where: Path, become) -> dict:
    """Ask the pool for a worker over a raw socket from a child after `become()`."""
    def ask_for_a_worker():
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(10)
        conn.connect(str(where / "pool.sock"))
        try:
            conn.send(json.dumps({"op": "lease"}).encode())
        except OSError:                 # a refusing pool may have closed already; its answer is queued
            pass
        data = conn.recv(1 << 16)
        return json.loads(data) if data else None
    return in_child(become, ask_for_a_worker)


def other_user_namespace() -> None:
    """Become the same uid inside a user namespace of its own (what a sandboxed notebook is, as a normal user)."""
    import ctypes
    uid, gid = os.getuid(), os.getgid()
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:          # CLONE_NEWUSER (os.unshare: 3.12)
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def test_the_pool_folder_and_socket_are_private(folder):
    where = small_pool()
    assert os.stat(where).st_mode & 0o777 == 0o700
    assert os.stat(where / "pool.sock").st_mode & 0o777 == 0o600
    assert pool.ask(where, {"op": "hello"})["key"] == "test-key"


@pytest.fixture
def reachable_folder(monkeypatch):
    """A pool folder whose parent any user may traverse (pytest's own temp folders are 0700)."""
    import tempfile
    parent = Path(tempfile.mkdtemp(prefix="pool-reach-", dir="/tmp"))
    os.chmod(parent, 0o711)
    monkeypatch.setenv(pool.DIR_ENV, str(parent / "pool"))
    yield parent / "pool"
    pool.stop(parent / "pool")
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_another_user_cannot_reach_it_and_is_refused_when_it_can(reachable_folder):
    """Is a connection from another uid stopped by the folder, and refused by the pool itself when
    the folder is opened up?"""
    where = small_pool()
    become_other = lambda: (os.setgroups([]), os.setgid(65534), os.setuid(65534))   # noqa: E731
    assert connect_as_child(where, become_other) == {"error": "PermissionError"}
    os.chmod(where, 0o755)
    os.chmod(where / "pool.sock", 0o777)
    try:
        answer = connect_as_child(where, become_other)
    finally:
        os.chmod(where, 0o700)
        os.chmod(where / "pool.sock", 0o600)
    assert answer == {"answer": {"refused": "uid 65534 is not the pool's owner"}}
    assert pool.status(where)["refused_connections"] == 1


def test_the_same_user_in_another_namespace_is_refused(folder):
    """A sandboxed notebook as a normal user is the instructor's uid in a user namespace of its own."""
    where = small_pool()
    answers = [connect_as_child(where, other_user_namespace) for _ in range(20)]
    # each is told why, even when the pool closed before the request arrived (it did reset the
    # peer 29 times in 30 before refusals were drained)
    assert answers == [{"answer": {"refused": "the process is in another user namespace"}}] * 20
    assert pool.status(where)["refused_connections"] == 20

    def lease_through_the_client():
        try:
            pool.Lease(where)
        except pool.PoolError as e:
            return str(e)
        return "leased"
    told = in_child(other_user_namespace, lease_through_the_client)
    assert told == {"answer": "the warm pool gave no worker: the process is in another user namespace"}
    info = wait_ready(where)
    assert not any(w["leased"] for w in info["workers"])


def test_a_pool_with_another_key_is_replaced_and_a_crashed_one_cleaned(folder):
    where = small_pool("first")
    first = pool.read_info(where)["pid"]
    messages = []
    pool.ensure_pool("second", 1, 1, warm.BASE, 5, log=messages.append)
    second = pool.read_info(where)["pid"]
    assert second != first and not pool._is_pool_process(first)
    assert pool.ask(where, {"op": "hello"})["key"] == "second"
    assert any("changed" in m for m in messages)
    os.kill(second, signal.SIGKILL)                       # a crash: socket and info file left behind
    while pool._is_pool_process(second):
        time.sleep(0.05)
    assert (where / "pool.sock").exists()
    messages.clear()
    pool.ensure_pool("second", 1, 1, warm.BASE, 5, log=messages.append)
    assert pool.read_info(where)["pid"] not in (first, second)
    assert any("ended without stopping" in m for m in messages)


def test_the_key_follows_the_code_a_worker_runs(tmp_path, monkeypatch):
    """Does changing one file of course_utils (or the grader) change the key a pool must have?"""
    from grader import layout
    for package in ("grader", "course_utils"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    pool.environment_key.cache_clear()               # hashed once per process: this test changes the code
    before = pool.pool_key(2, 1, "limits")
    assert pool.pool_key(2, 1, "limits") == before
    with open(tmp_path / "course_utils" / "cam.py", "a") as f:
        f.write("\n# changed\n")
    pool.environment_key.cache_clear()
    try:
        assert pool.pool_key(2, 1, "limits") != before
    finally:
        pool.environment_key.cache_clear()
    assert pool.pool_key(2, 1, "other limits") != pool.pool_key(2, 1, "limits")
    assert pool.pool_key(1, 1, "limits") != pool.pool_key(2, 1, "limits")


def test_a_killed_worker_and_a_caller_that_crashed_mid_job_are_replaced(folder):
    where = small_pool()
    worker = wait_ready(where)["workers"][0]["pid"]
    os.kill(worker, signal.SIGKILL)
    replaced = _next_worker(where, worker)
    # a caller leases the worker, sends half a control frame, and dies
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; from grader import pool;"
            "lease = pool.Lease(Path(sys.argv[1])); os.write(lease.to_worker, b'\\0\\0\\0\\0\\0\\0\\1\\0{'); os._exit(9)")
    done = subprocess.run([sys.executable, "-c", code, str(where), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    after = _next_worker(where, replaced)
    assert after not in (worker, replaced)
    assert "lease ended in the middle of a job" in (where / "pool.log").read_text()


def test_a_leased_worker_that_ended_between_jobs_is_traded_for_a_live_one(folder):
    """Does a call that holds a worker which dies before its next job lease another, not fail the job?"""
    from grader.worker import LeasedWorker
    where = small_pool()
    wait_ready(where)
    worker = LeasedWorker(where, threads=1)
    worker.start()
    first = worker._lease.pid
    os.kill(first, signal.SIGKILL)
    time.sleep(0.5)
    try:
        worker.start()                                   # what run() does before sending a job
        assert not worker._own and worker._lease.pid not in (0, first)
    finally:
        worker.close()


def _next_worker(where: Path, old: int) -> int:
    """The pid of the ready worker that replaced `old`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = pool.status(where) or {}
        pids = [w["pid"] for w in info.get("workers", []) if w["ready"]]
        if pids and old not in pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"worker {old} was not replaced: {pool.status(where)}")


def test_settings_come_from_course_toml_the_environment_and_the_flags(tmp_path, monkeypatch):
    monkeypatch.delenv(pool.SWITCH_ENV, raising=False)
    assert pool.settings(tmp_path) == pool.Settings()
    (tmp_path / "course.toml").write_text('[workers]\npool = false\nidle_minutes = 5\nwarm = ["sklearn"]\n')
    assert pool.settings(tmp_path) == pool.Settings(False, 5.0, ("sklearn",))
    assert pool.settings(tmp_path, enabled=True, idle_minutes=2).enabled
    (tmp_path / "course.toml").write_text("[workers]\npool = true\n")
    monkeypatch.setenv(pool.SWITCH_ENV, "off")
    assert not pool.settings(tmp_path).enabled
    (tmp_path / "course.toml").write_text("[workers]\nidle = 5\n")
    with pytest.raises(ValueError, match="unknown setting.*idle_minutes"):
        pool.settings(tmp_path)
    (tmp_path / "course.toml").write_text('[workers]\nwarm = ["not a module"]\n')
    with pytest.raises(ValueError, match="not a module name"):
        pool.settings(tmp_path)


def test_a_folder_someone_else_could_open_is_refused(tmp_path, monkeypatch):
    where = tmp_path / "open"
    where.mkdir(mode=0o755)
    os.chmod(where, 0o755)
    monkeypatch.setenv(pool.DIR_ENV, str(where))
    with pytest.raises(pool.PoolError, match="not a private folder of yours"):
        small_pool()


# ----------------------------------------------------------------------------- grading with the pool
PROBE = """
import os, json, socket
seen = {'folder': os.path.exists(POOL), 'parent': os.path.exists(os.path.dirname(POOL)), 'connect': None,
        'processes': []}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(os.path.join(POOL, 'pool.sock'))
    seen['connect'] = 'connected'
except OSError as e:
    seen['connect'] = type(e).__name__
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    # the run's own processes are forks of a worker (its command line); the pool process is not
    seen['processes'].append('pool' if b'grader.pool' in cmd else int(pid))
print('PROBE', json.dumps(seen))
"""


@pytest.fixture(scope="module")
def handed_in(tmp_path_factory) -> Path:
    """One lesson, one student of each kind and a prober, handed in; nothing graded."""
    course = classroom.new_course(tmp_path_factory.mktemp("pool-class") / "course", [LESSON])
    for kind in KINDS:
        classroom.hand_in(course, kind, LESSON, classroom.submission(LESSON, kind))
    return course


def grade_copy(course: Path, to: Path, use_pool: bool):
    from grader.grade import grade
    shutil.copytree(course, to)
    report = grade(LESSON, to, workers=2, progress=False, log=lambda m: None, pool=use_pool)
    return report, classroom.scores(to)


def test_scores_are_identical_with_and_without_the_pool(handed_in, tmp_path, folder):
    """The same class graded by workers of its own, by a pool started for the call, then by that pool warm."""
    _, alone = grade_copy(handed_in, tmp_path / "alone", use_pool=False)
    assert pool.status(folder) is None                       # no pool without asking for one
    cold, pooled = grade_copy(handed_in, tmp_path / "cold", use_pool=True)
    started = pool.status(folder)
    warm_report, again = grade_copy(handed_in, tmp_path / "warm", use_pool=True)
    assert pool.status(folder)["pid"] == started["pid"]      # the second call reused the pool
    assert sum(w["leases"] for w in pool.status(folder)["workers"]) >= 3
    assert alone == pooled == again
    assert [r.score for r in cold.results] and {r.status for r in warm_report.results} == {"graded"}


def test_a_students_process_cannot_see_or_reach_the_pool(handed_in, tmp_path, folder):
    course = tmp_path / "course"
    shutil.copytree(handed_in, course)
    nb = classroom.submission(LESSON, "correct")
    nb.cells.append(classroom.nbformat.v4.new_code_cell(f"POOL = {str(folder)!r}\n" + PROBE))
    classroom.hand_in(course, "prober", LESSON, nb)
    from grader.grade import grade
    report = grade(LESSON, course, workers=1, progress=False, log=lambda m: None, pool=True, students=["prober"])
    assert pool.status(folder) is not None, "the call should have used a pool"
    out = classroom.nbformat.read(course / "autograded" / "prober" / LESSON / f"{LESSON}.ipynb", as_version=4)
    lines = [line for cell in out.cells for o in cell.get("outputs", []) if o.output_type == "stream"
             for line in "".join(o.text).splitlines() if line.startswith("PROBE ")]
    assert lines, f"the probe did not run: {report.results}"
    seen = json.loads(lines[-1][6:])
    assert {k: seen[k] for k in ("folder", "parent", "connect")} == {"folder": False, "parent": False,
                                                                      "connect": "FileNotFoundError"}
    # only its own run is in its PID namespace (its init and itself): no pool, no worker, no grader
    assert "pool" not in seen["processes"] and len(seen["processes"]) <= 3, seen["processes"]
    workers = [w["pid"] for w in pool.status(folder)["workers"]]
    assert workers and not set(workers) & set(seen["processes"])
