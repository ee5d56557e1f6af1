"""`course grade` on a hostile class: every case of the grading-engine issue, through the real command.

One scratch course (lesson 01_setup: is_cat 1 point, cat_index 1, as_batch 2, prob_cat 2) receives
one submission per case; a single `course grade` run grades them all in parallel, sandboxed, and
`course export` writes the CSV. Each test then checks one student's row, what their autograded
notebook shows, and that nothing outside the sandbox changed.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from conftest import CountingServer  # noqa: E402

LESSON = "01_setup"
FULL = 6.0


def run_course(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real `course` command (python -m course_utils), as an instructor runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


class Listener(CountingServer):
    """A TCP server on the grader's loopback that counts who connects (a sandbox must not)."""

    def __init__(self):
        super().__init__(socket.create_server(("127.0.0.1", 0)))
        self.port = self.sock.getsockname()[1]


def with_answers(**typed) -> "classroom.nbformat.NotebookNode":
    """The correct submission with some answers replaced (grade_id=source)."""
    return classroom.submission(LESSON, "correct", wrong=typed)


def with_cell(nb, source: str, after: str = "is_cat"):
    """Add a code cell of the student's own after the answer cell `after`."""
    index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after)
    nb.cells.insert(index + 1, classroom.nbformat.v4.new_code_cell(source))
    return nb


def build_class(course: Path, outside: Path, port: int) -> dict[str, str]:
    """Hand in one submission per case; returns {student: what it tries}."""
    right = classroom.answers(LESSON)
    hand = lambda student, nb, name=None: classroom.hand_in(course, student, LESSON, nb, name)  # noqa: E731
    folder = lambda student: course / "submitted" / student / LESSON                          # noqa: E731
    hand("solver", classroom.submission(LESSON, "correct"))
    hand("blank", classroom.submission(LESSON, "blank"))
    hand("loop", with_answers(prob_cat="while True:\n    pass\n" + right["prob_cat"]))
    hand("exit", with_answers(prob_cat="import os\nos._exit(3)\n" + right["prob_cat"]))
    hand("membomb", with_answers(prob_cat="hog = []\nwhile True:\n    hog.append(b'x' * (256 << 20))\n"
                                          + right["prob_cat"]))
    hand("forkflood", with_cell(classroom.submission(LESSON, "correct"), (
        "import os, time\nchildren = []\ntry:\n    for _ in range(300):\n        pid = os.fork()\n"
        "        if pid == 0:\n            time.sleep(120)\n            os._exit(0)\n        children.append(pid)\n"
        "except OSError as e:\n    print('FORK REFUSED after', len(children), type(e).__name__)\n")))
    hand("network", with_cell(classroom.submission(LESSON, "correct"), (
        "import urllib.request\ntry:\n"
        f"    urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3)\n    print('NETWORK REACHED')\n"
        "except Exception as e:\n    print('NETWORK BLOCKED', type(e).__name__)\n")))
    nb = classroom.submission(LESSON, "correct")
    nb.cells = [c for c in nb.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    hand("testsdeleted", nb)
    nb = classroom.submission(LESSON, "blank")
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("locked"):
            c.source = "pass" if c.cell_type == "code" else "edited"
    hand("lockededited", nb)
    hand("stripped", classroom.submission(LESSON, "stripped"))
    folder("invalidjson").mkdir(parents=True)
    (folder("invalidjson") / f"{LESSON}.ipynb").write_text('{"cells": [')
    folder("emptyfile").mkdir(parents=True)
    (folder("emptyfile") / f"{LESSON}.ipynb").write_bytes(b"")
    folder("nonotebook").mkdir(parents=True)
    (folder("nonotebook") / "my answers.txt").write_text("I did it on paper")
    hand("renamed", classroom.submission(LESSON, "correct"), f"Copy of {LESSON} (1).ipynb")
    hand("bigoutput", with_cell(classroom.submission(LESSON, "correct"), "print('x' * (50 << 20))\n"))
    hand("noisy", with_answers(is_cat="import sys, warnings\nwarnings.warn('a warning from a correct answer')\n"
                                      "print('noise on stderr', file=sys.stderr)\n" + right["is_cat"]))
    hand("alwaysequal", with_answers(prob_cat=(
        "import torch, numpy\nclass Anything(float):\n    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "torch.allclose = lambda *a, **k: True\nnumpy.testing.assert_allclose = lambda *a, **k: None\n"
        "def prob_cat(model, x):\n    return Anything(0.5)\n")))
    hand("customexc", with_cell(classroom.submission(LESSON, "blank"),
                                "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n", after="md-03"))
    targets = ["../../../gradebook.db", str(course / "gradebook.db"), str(course / "nbgrader_config.py"),
               str(outside / "pwned.txt"), "/tmp/pwned-by-a-student.txt"]
    hand("writer", with_cell(classroom.submission(LESSON, "correct"), (
        f"import pathlib\nfor target in {targets!r}:\n    try:\n        pathlib.Path(target).write_text('pwned')\n"
        "        print('WROTE', target)\n    except OSError as e:\n        print('DENIED', type(e).__name__)\n")))
    secrets = [str(course / "submitted" / "solver" / LESSON / f"{LESSON}.ipynb"),
               str(course / "source" / LESSON / f"{LESSON}.ipynb"), str(course / "gradebook.db"),
               str(ROOT / "solutions" / LESSON / f"{LESSON}.ipynb")]
    hand("reader", with_cell(classroom.submission(LESSON, "correct"), (
        f"for secret in {secrets!r}:\n    try:\n        with open(secret) as f:\n"
        "            print('READ', f.read(80))\n    except OSError as e:\n        print('DENIED', type(e).__name__)\n")))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Grade the hostile class once; return what the tests inspect."""
    course = classroom.new_course(tmp_path_factory.mktemp("hostile"), [LESSON])
    outside = tmp_path_factory.mktemp("outside")
    listener = Listener()
    build_class(course, outside, listener.port)
    config_before = (course / "nbgrader_config.py").read_bytes()
    done = run_course("grade", LESSON, "--course", str(course), "--workers", "2", "--cell-timeout", "20",
                      "--memory", "2048", "--quiet")
    assert done.returncode == 0, f"course grade failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    csv_path = tmp_path_factory.mktemp("export") / "grades.csv"
    # the computed scores, flagged ones included (a plain export holds those back until reviewed)
    exported = run_course("export", LESSON, "--course", str(course), "--to", str(csv_path), "--include-unreviewed")
    assert exported.returncode == 0, exported.stderr
    with open(csv_path, newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    plain_path = csv_path.with_name("plain.csv")
    assert run_course("export", LESSON, "--course", str(course), "--to", str(plain_path)).returncode == 0
    with open(plain_path, newline="") as f:
        plain = {r["student_id"]: r for r in csv.DictReader(f)}
    listener.sock.close()
    return dict(course=course, outside=outside, rows=rows, stdout=done.stdout, listener=listener,
                config_before=config_before, csv=csv_path, plain=plain)


def outputs(hostile, student: str) -> str:
    """Everything the student's autograded notebook printed, as one text."""
    nb = classroom.nbformat.read(hostile["course"] / "autograded" / student / LESSON / f"{LESSON}.ipynb",
                                 as_version=4)
    return "\n".join("".join(o.get("text", "")) if o.output_type == "stream" else
                     f"{o.get('ename', '')}: {o.get('evalue', '')}" if o.output_type == "error" else str(o.get("data", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


# (student, status, score, words that must appear in the reasons)
EXPECTED = [
    ("solver", "graded", FULL, []),
    ("blank", "graded", 0, []),
    ("loop", "graded", 4, ["ran for more than 20 s"]),
    ("exit", "graded", 4, ["ended the Python process"]),
    ("membomb", "graded", 4, ["ran out of memory (MemoryError)", "2,048 MB"]),
    ("forkflood", "graded", FULL, []),
    ("network", "graded", FULL, []),
    ("testsdeleted", "graded", FULL, ["test cell 'test_is_cat' was missing; the original was put back"]),
    ("lockededited", "graded", 0, ["test cell 'test_prob_cat' was edited; the original was put back"]),
    ("stripped", "graded", FULL, ["nbgrader metadata was missing"]),
    ("invalidjson", "failed", 0, ["is not valid notebook JSON"]),
    ("emptyfile", "failed", 0, ["is empty"]),
    ("nonotebook", "missing", 0, [f"no notebook {LESSON}.ipynb was handed in"]),
    ("renamed", "graded", FULL, [f"'Copy of {LESSON} (1).ipynb' was graded as {LESSON}.ipynb"]),
    ("bigoutput", "graded", FULL, []),
    ("noisy", "graded", FULL, []),
    ("alwaysequal", "flagged", None, ["flagged for review", "torch.allclose", "numpy.testing.assert_allclose"]),
    ("customexc", "flagged", 0, ["flagged for review", "set_custom_exc"]),
    ("writer", "graded", FULL, []),
    ("reader", "graded", FULL, []),
]


@pytest.mark.parametrize("student,status,score,words", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_each_case_is_graded_to_its_intended_score_or_flagged(hostile, student, status, score, words):
    row = hostile["rows"][student]
    assert row["status"] == status, row
    assert float(row["max_score"]) == FULL
    if score is not None:
        assert float(row["score"]) == score, row
    for word in words:
        assert word in row["reasons"], f"{student}: {word!r} not in reasons {row['reasons']!r}"


def test_export_has_exactly_the_promised_columns_and_a_row_per_student(hostile):
    with open(hostile["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["student_id", "assignment", "score", "max_score", "status", "reasons"]
    assert set(hostile["rows"]) == {e[0] for e in EXPECTED}


def test_a_tampering_submission_never_gets_full_marks_silently(hostile):
    row = hostile["rows"]["alwaysequal"]
    assert float(row["score"]) < FULL or row["status"] == "flagged"


def test_the_infinite_loop_costs_only_its_exercise(hostile):
    text = outputs(hostile, "loop")
    assert "ran for more than 20 s" in text


def test_memory_bomb_hit_the_limit_not_the_machine(hostile):
    assert "MemoryError" in outputs(hostile, "membomb")


def test_fork_flood_was_refused_and_left_no_process(hostile):
    assert "FORK REFUSED after" in outputs(hostile, "forkflood")
    leftovers = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) >= 1_900_000_000]
    assert not leftovers, f"sandbox processes still running: {leftovers}"


def _uid(proc: Path) -> int:
    try:
        return proc.stat().st_uid
    except OSError:
        return -1


def test_no_network_from_the_sandbox(hostile):
    assert "NETWORK BLOCKED" in outputs(hostile, "network")
    assert "NETWORK REACHED" not in outputs(hostile, "network")
    assert hostile["listener"].connections == 0


def test_fifty_megabytes_of_output_are_cut(hostile):
    path = hostile["course"] / "autograded" / "bigoutput" / LESSON / f"{LESSON}.ipynb"
    assert path.stat().st_size < 8 << 20
    assert "bytes of output were cut" in outputs(hostile, "bigoutput")


def test_a_custom_exception_handler_does_not_hide_errors(hostile):
    assert "NotImplementedError" in outputs(hostile, "customexc")


def test_writes_outside_the_sandbox_do_not_land(hostile):
    text = outputs(hostile, "writer")
    # Its /tmp is its own (a private tmpfs that ends with the run): only that write succeeds.
    assert text.count("DENIED") == 4 and text.count("WROTE") == 1 and "WROTE /tmp/pwned-by-a-student.txt" in text
    course = hostile["course"]
    assert (course / "nbgrader_config.py").read_bytes() == hostile["config_before"]
    assert not (hostile["outside"] / "pwned.txt").exists()
    assert not Path("/tmp/pwned-by-a-student.txt").exists()
    assert b"pwned" not in (course / "gradebook.db").read_bytes()[:16]
    assert (course / "gradebook.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_other_students_and_the_solutions_cannot_be_read(hostile):
    text = outputs(hostile, "reader")
    assert "READ " not in text and text.count("DENIED") == 4


def test_the_gradebook_holds_every_student_with_per_cell_scores(hostile):
    scores = classroom.scores(hostile["course"])
    assert scores[("solver", LESSON)] == {"test_is_cat": (1, 1), "test_cat_index": (1, 1),
                                          "test_as_batch": (2, 2), "test_prob_cat": (2, 2)}
    assert scores[("loop", LESSON)]["test_prob_cat"] == (0, 2)
    assert scores[("loop", LESSON)]["test_as_batch"] == (2, 2)


def test_flagged_scores_are_held_back_from_a_plain_export_until_reviewed(hostile):
    flagged = [sid for sid, r in hostile["rows"].items() if r["status"] == "flagged"]
    assert flagged and all(hostile["plain"][sid]["score"] == "" for sid in flagged)
    assert all(hostile["plain"][sid]["score"] == r["score"] for sid, r in hostile["rows"].items() if sid not in flagged)


def test_a_second_run_grades_nothing_again(hostile):
    before = hashlib.sha256((hostile["course"] / "gradebook.db").read_bytes()).hexdigest()
    done = run_course("grade", LESSON, "--course", str(hostile["course"]), "--cell-timeout", "20", "--memory", "2048",
                      "--quiet")      # the same limits: a result graded under other limits would be stale
    assert done.returncode == 0, done.stderr
    assert "0 submissions graded now, 20 already graded" in done.stdout
    assert hashlib.sha256((hostile["course"] / "gradebook.db").read_bytes()).hexdigest() == before


# ----------------------------------------------------------------------------- same scores as nbgrader
def test_same_per_cell_scores_as_serial_nbgrader_on_every_lesson(graded, tmp_path):
    """solver / blank / onewrong of all lessons: `course grade --all` == `nbgrader autograde`, cell by cell."""
    reference, nbgrader_scores = graded
    course = tmp_path / "course"
    for part in ("source", "release", "submitted"):
        shutil.copytree(reference / part, course / part)
    shutil.copy(reference / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copy(reference / "gradebook-generated.db", course / "gradebook.db")
    done = run_course("grade", "--all", "--course", str(course), "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    ours = classroom.scores(course)
    for key, cells in nbgrader_scores.items():
        assert ours[key] == cells, f"{key}: course grade {ours[key]} != nbgrader {cells}"
    assert "graded" in done.stdout and "flagged" not in done.stdout and "failed" not in done.stdout


# ----------------------------------------------------------------------------- resuming, and Dask
KINDS = {"s1": "correct", "s2": "partly", "s3": "blank", "s4": "stripped", "s5": "correct", "s6": "partly"}
SCORES = {"correct": FULL, "partly": 4.0, "blank": 0.0, "stripped": FULL}


@pytest.fixture(scope="module")
def small_class(tmp_path_factory):
    """Six students of one lesson, not graded yet (tests copy it)."""
    course = classroom.new_course(tmp_path_factory.mktemp("small"), [LESSON])
    for student, kind in KINDS.items():
        classroom.hand_in(course, student, LESSON, classroom.submission(LESSON, kind))
    return course


def copy_course(course: Path, to: Path) -> Path:
    shutil.copytree(course, to)
    return to


def export(course: Path, tmp_path: Path) -> dict[str, dict]:
    path = tmp_path / f"{course.name}.csv"
    done = run_course("export", LESSON, "--course", str(course), "--to", str(path))
    assert done.returncode == 0, done.stderr
    with open(path, newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


def children(pid: int) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_an_interrupted_run_resumes_and_loses_nothing(small_class, tmp_path):
    course = copy_course(small_class, tmp_path / "resumed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    grader = subprocess.Popen([sys.executable, "-m", "grader", "grade", LESSON, "--course", str(course),
                               "--workers", "1", "--quiet"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    committed = lambda: sorted(p.parts[-3] for p in (course / "autograded").glob("*/*/course-grade.json"))  # noqa: E731
    deadline = time.monotonic() + 600
    while len(committed()) < 2 and grader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    from grader import pool
    workers = [w for w in children(grader.pid) if not pool._is_pool_process(w)]   # the pool is meant to stay
    leased = [w["pid"] for w in (pool.status(pool.pool_dir()) or {}).get("workers", []) if w["leased"]]
    grader.send_signal(signal.SIGKILL)                    # the grader dies half-way, without warning
    grader.wait()
    before = committed()
    assert 2 <= len(before) < len(KINDS), before
    time.sleep(2)
    alive = lambda pid: Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)  # noqa: E731
    assert not [w for w in workers if alive(w)], "the grader's processes outlived it"
    # the pool's worker that was running its job is killed and replaced, never handed to the next call
    assert leased and not [w for w in leased if alive(w)], "the worker of the dead call is still running"
    # Everywhere an instructor looks, the students the run did not reach are "not graded", with the fix.
    unreached = set(KINDS) - set(before)
    halfway = export(course, tmp_path)
    assert {sid for sid, r in halfway.items() if r["status"] == "not graded"} == unreached
    assert all(halfway[sid]["score"] == "" and "run `course grade" in halfway[sid]["reasons"] for sid in unreached)
    status = run_course("status", "--course", str(course))
    for sid in unreached:
        assert re.search(rf"\b{sid}\s+handed in but not graded yet", status.stdout), status.stdout
    assert run_course("feedback", LESSON, "--course", str(course)).returncode == 0
    page = (course / "feedback" / sorted(unreached)[0] / LESSON / f"{LESSON}.html").read_text()
    assert "not graded" in page and "handed in but not graded yet" in page
    done = run_course("grade", LESSON, "--course", str(course), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(KINDS) - len(before)} submissions graded now, {len(before)} already graded" in done.stdout
    rows = export(course, tmp_path)
    assert {s: float(r["score"]) for s, r in rows.items()} == {s: SCORES[k] for s, k in KINDS.items()}
    assert {r["status"] for r in rows.values()} == {"graded"}


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_a_dask_cluster_gives_the_same_gradebook_as_the_local_pool(small_class, tmp_path):
    from distributed import Client, LocalCluster
    local = copy_course(small_class, tmp_path / "local")
    on_dask = copy_course(small_class, tmp_path / "dask")
    done = run_course("grade", LESSON, "--course", str(local), "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    grading_workers = lambda: sorted(w._proc.pid for w in __import__("grader.worker", fromlist=["_local"])  # noqa: E731
                                     ._local.values() if w._proc is not None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        done = run_course("grade", LESSON, "--course", str(on_dask), "--scheduler", cluster.scheduler_address,
                          "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
        first = client.run(grading_workers)
        again = run_course("grade", LESSON, "--course", str(copy_course(small_class, tmp_path / "again")),
                           "--scheduler", cluster.scheduler_address, "--quiet")
        assert again.returncode == 0, again.stderr[-3000:]
        # each Dask worker warmed one grading worker (the plugin), and the second call found it running
        assert all(len(pids) == 1 for pids in first.values()) and client.run(grading_workers) == first
        assert classroom.scores(tmp_path / "again") == classroom.scores(on_dask)
    assert classroom.scores(on_dask) == classroom.scores(local)
    strip = lambda rows: {s: {k: v for k, v in r.items()} for s, r in rows.items()}  # noqa: E731
    assert strip(export(on_dask, tmp_path)) == strip(export(local, tmp_path))
    assert {s: float(r["score"]) for s, r in export(local, tmp_path).items()} == {s: SCORES[k] for s, k in KINDS.items()}
