"""The sandbox, probed directly: a confined process reads only what it should and writes only its folder.

Each probe runs in a fresh Python process that calls `confine` on itself (as the grader's forked
child does) and then tries things a student's notebook might; it reports what happened as JSON.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from course_utils.autograde.sandbox import Limits, readable_paths, support

ROOT = Path(__file__).resolve().parents[1]
PROBE = textwrap.dedent('''
    import json, os, socket, sys
    from course_utils.autograde.sandbox import Limits, Policy, confine
    workdir, course, cache, port, readable = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
    confine(Policy(workdir=workdir, readable=tuple(readable), limits=Limits(memory_bytes=1 << 30, processes=32)))
    seen = {}
    def attempt(name, action):
        try:
            action()
            seen[name] = "allowed"
        except BaseException as e:
            seen[name] = type(e).__name__
    attempt("read course file", lambda: open(os.path.join(course, "gradebook.db")).read())
    attempt("list course", lambda: os.listdir(course))
    attempt("write course file", lambda: open(os.path.join(course, "gradebook.db"), "w").write("x"))
    attempt("create in course", lambda: open(os.path.join(course, "new.txt"), "w").write("x"))
    attempt("write /tmp", lambda: open("/tmp/sandbox-probe-escape.txt", "w").write("x"))
    attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
    attempt("read repository solutions", lambda: os.listdir(os.path.join(sys.argv[6], "solutions")))
    attempt("write workdir", lambda: open(os.path.join(workdir, "mine.txt"), "w").write("x" * 1000))
    attempt("read cache", lambda: os.listdir(cache))
    attempt("import course_utils.cam", lambda: __import__("course_utils.cam"))
    attempt("connect loopback", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
    attempt("allocate 2 GB", lambda: bytearray(2 << 30))
    def flood():
        kids = []
        try:
            for _ in range(200):
                pid = os.fork()
                if pid == 0:
                    import time; time.sleep(5); os._exit(0)
                kids.append(pid)
        finally:
            seen["forked"] = len(kids)
    attempt("fork 200", flood)
    print(json.dumps(seen), flush=True)
    os._exit(0)
''')


def test_this_machine_can_sandbox():
    assert support() == [], "the grading tests need Landlock and network namespaces"


def test_readable_paths_leave_out_every_course_but_keep_course_utils(tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    paths = [Path(p) for p in readable_paths(course)]
    assert not any(course.is_relative_to(p) or p.is_relative_to(course) for p in paths)
    assert ROOT not in paths, "the repository (solutions/, a gradebook) must not be readable"
    assert (ROOT / "course_utils").resolve() in paths


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    (course / "gradebook.db").write_text("grades")
    workdir = tmp_path_factory.mktemp("work")
    server = socket.create_server(("127.0.0.1", 0))
    from course_utils.data import cache_dir
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(workdir), str(course), str(cache),
                           str(server.getsockname()[1]), json.dumps(readable_paths(course)), str(ROOT)],
                          env=env, capture_output=True, text=True, timeout=120)
    server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), course, workdir


@pytest.mark.parametrize("what", ["read course file", "list course", "write course file", "create in course",
                                  "write /tmp", "read /etc/shadow", "read repository solutions"])
def test_denied_outside_the_sandbox(probe, what):
    assert probe[0][what] == "PermissionError"


@pytest.mark.parametrize("what", ["write workdir", "read cache", "import course_utils.cam"])
def test_allowed_inside(probe, what):
    assert probe[0][what] == "allowed"


def test_nothing_reached_the_course_or_tmp(probe):
    _, course, workdir = probe
    assert (course / "gradebook.db").read_text() == "grades"
    assert not (course / "new.txt").exists() and not Path("/tmp/sandbox-probe-escape.txt").exists()
    assert (workdir / "mine.txt").exists()


def test_no_network(probe):
    assert probe[0]["connect loopback"] in ("OSError", "ConnectionRefusedError", "TimeoutError")


def test_memory_and_process_limits(probe):
    assert probe[0]["allocate 2 GB"] == "MemoryError"
    assert probe[0]["fork 200"] == "BlockingIOError" and probe[0]["forked"] < 32


def test_limits_are_plain_data():
    limits = Limits(cell_seconds=5)
    assert limits.cell_seconds == 5 and limits.processes == 64
