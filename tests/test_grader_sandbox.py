"""The sandbox, probed directly: a confined run reads only what it should, writes only its scratch,
holds no privilege, and Landlock still holds on its own.

Each probe is a fresh Python process (as root, and as a throw-away normal user) that starts one run
with `sandbox.start` and a target that tries what a student's notebook might, reporting what happened
as JSON on the run's channel. One probe uses every layer; another leaves the private root out
(`without={"mount"}`), so that Landlock alone must refuse what the mount namespace otherwise hides.
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

from grader.layout import ROOT
from grader.sandbox import LAYERS, Limits, readable_paths, support

PROBE = textwrap.dedent('''
    import ctypes, json, os, socket, sys, tempfile
    import torch                     # warm, as a grading worker is: the address-space limit counts from here
    from grader import sandbox
    course, cache, port, without, stage = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    r, w = os.pipe()
    def target():
        seen = {}
        def attempt(name, action):
            try:
                action()
                seen[name] = "allowed"
            except BaseException as e:
                seen[name] = type(e).__name__
        home = os.environ["HOME"]
        attempt("read course file", lambda: open(os.path.join(course, "gradebook.db")).read())
        attempt("list course", lambda: os.listdir(course))
        attempt("write course file", lambda: open(os.path.join(course, "gradebook.db"), "w").write("x"))
        attempt("create in course", lambda: open(os.path.join(course, "new.txt"), "w").write("x"))
        attempt("write /tmp", lambda: open("/tmp/sandbox-probe-escape.txt", "w").write("x"))
        attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
        attempt("read repository solutions", lambda: os.listdir(os.path.join(sys.argv[6], "solutions")))
        attempt("write home", lambda: open(os.path.join(home, "mine.txt"), "w").write("x" * 1000))
        attempt("write cache", lambda: open(os.path.join(cache, "planted.txt"), "w").write("x"))
        attempt("read cache", lambda: os.listdir(cache))
        attempt("read a bound folder under /tmp", lambda: open(os.path.join(sys.argv[7], "hello.txt")).read())
        attempt("write a bound folder under /tmp", lambda: open(os.path.join(sys.argv[7], "new.txt"), "w").write("x"))
        attempt("import course_utils.cam", lambda: __import__("course_utils.cam"))
        attempt("connect loopback", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
        attempt("allocate 2 GB", lambda: bytearray(2 << 30))
        libc = ctypes.CDLL(None, use_errno=True)
        def by_handle():
            handle = ctypes.create_string_buffer(8 + 128)
            ctypes.memmove(handle, (128).to_bytes(4, "little"), 4)
            mount_id = ctypes.c_int()
            if libc.name_to_handle_at(-100, b"/usr", handle, ctypes.byref(mount_id), 0) != 0:
                raise OSError(ctypes.get_errno(), "name_to_handle_at")
            if libc.open_by_handle_at(os.open("/usr", os.O_RDONLY), handle, 0) < 0:
                raise OSError(ctypes.get_errno(), "open_by_handle_at")
        attempt("open_by_handle_at", by_handle)
        status = dict(l.split(":\\t") for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
        seen["caps"] = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        seen["no_new_privs"] = status["NoNewPrivs"].strip()
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
        os.write(w, json.dumps(seen).encode())
    readable = sandbox.readable_paths(course, extra=(sys.argv[7],))
    policy = sandbox.Policy(readable=readable, stage=stage, workdir=stage, without=frozenset(filter(None, without.split(","))),
                            limits=sandbox.Limits(memory_bytes=1 << 30, processes=32))
    run = sandbox.start(policy, target, keep_fds=(w,))
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    report = run.stop(grace=60)
    print(json.dumps({"seen": json.loads(data or b"{}"), "report": report}))
''')


def test_this_machine_gives_every_layer():
    problems = support()
    assert set(problems) == set(LAYERS)
    assert all(v is None for v in problems.values()), problems


def test_readable_paths_leave_out_every_course_and_the_home_folder_but_keep_course_utils(tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    paths = [Path(p) for p in readable_paths(course)]
    assert not any(course.is_relative_to(p) or p.is_relative_to(course) for p in paths)
    assert ROOT not in paths, "the repository (solutions/, a gradebook) must not be readable"
    assert not any(Path.home().is_relative_to(p) for p in paths), "the home folder must not be readable"
    assert any((ROOT / "course_utils").resolve().is_relative_to(p) for p in paths)


def _probe(tmp_path_factory, user, without: str) -> dict:
    base = tmp_path_factory.mktemp("probe")
    os.chmod(base, 0o755)
    course = base / "course"
    course.mkdir()
    (course / "gradebook.db").write_text("grades")
    stage = base / "stage"
    stage.mkdir()
    extra = base / "library"          # a readable folder under /tmp, as a checkout in a temporary folder is
    extra.mkdir()
    (extra / "hello.txt").write_text("hello")
    if user:
        for p in (course, course / "gradebook.db", stage):
            os.chown(p, user.uid, user.gid)
    server = socket.create_server(("127.0.0.1", 0))
    from course_utils.data import cache_dir
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONPATH": str(ROOT), "COURSE_CACHE": str(cache_dir()),
           "HOME": str(user.home if user else base), "SECRET_TOKEN": "tok-probe"}
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, str(course), str(cache_dir()),
                           str(server.getsockname()[1]), without, str(stage), str(ROOT), str(extra)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=str(base),
                          **(user.popen_args() if user else {}))
    server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["course"], result["stage"] = course, stage
    return result


@pytest.fixture(scope="module", params=["root", "user"])
def mode(request, normal_user):
    if request.param == "root" and os.geteuid() != 0:
        pytest.skip("root mode needs root")
    return request.param, (normal_user if request.param == "user" else None)


@pytest.fixture(scope="module")
def probe(tmp_path_factory, mode):
    return _probe(tmp_path_factory, mode[1], "")


@pytest.fixture(scope="module")
def landlock_only(tmp_path_factory, mode):
    return _probe(tmp_path_factory, mode[1], "mount")


@pytest.mark.parametrize("what", ["read course file", "list course", "write course file", "create in course",
                                  "read /etc/shadow", "read repository solutions", "write cache",
                                  "write a bound folder under /tmp"])
def test_denied_outside_the_sandbox(probe, what):
    assert probe["seen"][what] in ("PermissionError", "FileNotFoundError", "OSError"), probe["seen"]


@pytest.mark.parametrize("what", ["write home", "write /tmp", "read cache", "import course_utils.cam",
                                  "read a bound folder under /tmp"])
def test_allowed_inside(probe, what):
    assert probe["seen"][what] == "allowed", probe["seen"]


def test_nothing_reached_the_course_tmp_or_cache(probe, landlock_only):
    from course_utils.data import cache_dir
    for result in (probe, landlock_only):
        assert (result["course"] / "gradebook.db").read_text() == "grades"
        assert not (result["course"] / "new.txt").exists()
    assert not Path("/tmp/sandbox-probe-escape.txt").exists()
    assert not (cache_dir() / "planted.txt").exists()
    assert list(probe["stage"].iterdir()) == [], "the private root's stage folder must be empty afterwards"


def test_no_privilege_is_left(probe):
    assert set(probe["seen"]["caps"].values()) == {"0000000000000000"}, probe["seen"]["caps"]
    assert probe["seen"]["no_new_privs"] == "1"


def test_open_by_handle_at_is_refused(probe, landlock_only):
    assert probe["seen"]["open_by_handle_at"] in ("PermissionError", "OSError")
    assert landlock_only["seen"]["open_by_handle_at"] in ("PermissionError", "OSError")


@pytest.mark.parametrize("what", ["read course file", "list course", "write course file", "create in course",
                                  "write /tmp", "read repository solutions", "write cache"])
def test_landlock_alone_still_refuses(landlock_only, what):
    """Without the private root, the same attempts meet Landlock (finding 6: keep it)."""
    assert landlock_only["seen"][what] == "PermissionError", landlock_only["seen"]


def test_no_network(probe):
    assert probe["seen"]["connect loopback"] in ("OSError", "ConnectionRefusedError", "TimeoutError")


def test_memory_and_process_limits(probe):
    assert probe["seen"]["allocate 2 GB"] == "MemoryError"
    assert probe["seen"]["fork 200"] == "BlockingIOError" and probe["seen"]["forked"] < 32


def test_the_keeper_reports_the_run(probe):
    report = probe["report"]
    assert report["stopped"] is None and report["setup_error"] is None
    assert report["peak_processes"] >= 1 and report["samples"] >= 1


def test_limits_are_plain_data():
    limits = Limits(cell_seconds=5)
    assert limits.cell_seconds == 5 and limits.processes == 64 and limits.disk_bytes == 256 << 20
