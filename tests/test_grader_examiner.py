"""The examiner decides every verdict: forged submissions get exactly what their real answers earn.

One scratch course (lesson 01_setup: is_cat 1 point, cat_index 1, as_batch 2, prob_cat 2) receives
one submission per forgery, each written by someone who has read grader/ (the runner, the protocol,
the student's end of the channel). One `course grade` run grades them all, sandboxed, as root and
again as a normal user (the sandbox is built differently); each case states the per-cell scores its
real answers earn, and must get exactly those in both. Plain
`nbgrader autograde`, which runs the tests in the student's process, is shown giving several of
them full marks, so the cases are real attacks and not just broken notebooks.

A last student searches everything its process can read (the files, its own memory) for the
hidden tests' source lines, and the feedback pages are searched too: under `course grade` the
hidden tests never enter the student's process, and never come back to the student.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.feedback import HIDDEN
from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "01_setup"
TESTS = ("test_is_cat", "test_cat_index", "test_as_batch", "test_prob_cat")
NOTHING = {"test_is_cat": 0.0, "test_cat_index": 0.0, "test_as_batch": 0.0, "test_prob_cat": 0.0}
ONLY_IS_CAT = {**NOTHING, "test_is_cat": 1.0}
EVERYTHING = {"test_is_cat": 1.0, "test_cat_index": 1.0, "test_as_batch": 2.0, "test_prob_cat": 2.0}

# ----------------------------------------------------------------------------- the forgeries
# Each is code of the student's own, in a cell added after `after` (a cell of the lesson), with the
# test cells' positions in their notebook known to them (TEST_CELLS is filled in).

ANSWER_FRAMES = """
import os, json, struct
# The frames the runner and the examiner expect: reports of every test cell as done with no error,
# and protocol answers for any request number, on every descriptor this process has.
reports = [m for i in TEST_CELLS for m in ({"start": i}, {"done": i, "outputs": [], "seconds": 0.0})]
answers = [{"seq": n, "ok": True} for n in range(1, 40)] + [{"ready": i} for i in TEST_CELLS]
for fd in range(3, 256):
    for m in reports:
        data = json.dumps(m).encode()
        try: os.write(fd, struct.pack("!Q", len(data)) + data)
        except OSError: break
    for m in answers:
        data = json.dumps(m).encode()
        try: os.write(fd, struct.pack("!I", len(data)) + data)
        except OSError: break
"""

PATCHED_RUNNER = """
import sys
# Every later cell run as `pass` (the tests included); and, under course grade, every question of
# the examiner answered with True and every cell reported with clean outputs.
shell = getattr(sys.modules['IPython'], 'get_' + 'ipython')()
run_cell = shell.run_cell
run_cell_async = shell.run_cell_async
shell.run_cell = lambda raw_cell, *a, **k: run_cell('pass', *a, **k)
async def run_nothing(raw_cell, *a, **k):
    return await run_cell_async('pass', *a, **k)
shell.run_cell_async = run_nothing
side, run, wire = (sys.modules.get('grader.' + n) for n in ('student_side', 'execute', 'protocol'))
if side is not None:
    def _answer(request, blobs, namespace):
        out = []
        return wire.encode(True, out, lambda value: 0), out
    side._answer = _answer
    _send = run.send
    run.send = lambda fd, m: _send(fd, {**m, 'outputs': []} if 'done' in m else m)
"""

SWALLOWED_EXCEPTIONS = """
import sys
# An exception handler that turns every error of every later cell (the tests included) into nothing.
shell = getattr(sys.modules['IPython'], 'get_' + 'ipython')()
h = type('h', (), {'__call__': lambda self, *a, **k: None})()
getattr(shell, 'set_' + 'custom_exc')((BaseException,), h)
sys.excepthook = h
"""

PATCH_EVERYTHING = """
import builtins, contextlib, sys, torch
import course_utils.checks as checks
# The checks, the comparison functions and the test helper itself, replaced.
class Anything:
    def __eq__(self, other): return True
    def __bool__(self): return True
    def __getattr__(self, name): return Anything()
    def __call__(self, *a, **k): return Anything()
    def __getitem__(self, k): return Anything()
    def __iter__(self): return iter(())
@contextlib.contextmanager
def examine(namespace):
    try:
        yield Anything()
    except BaseException:
        pass
for name in ('check_bool', 'check_number', 'check_tensor'):
    setattr(checks, name, lambda *a, **k: None)
checks.examine = examine
globals()['examine'] = examine
torch.allclose = lambda *a, **k: True
checks._allclose = lambda *a, **k: True
builtins.print = lambda *a, **k: None
"""

LOOKALIKES = {
    "is_cat": "class Yes:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
              "def is_cat(name):\n    return Yes()\n",
    "cat_index": "class One(int):\n    def __eq__(self, other): return True\ncat_index = One(0)\n",
    "as_batch": "import torch\nclass T(torch.Tensor):\n    def __eq__(self, other): return torch.ones(1, dtype=torch.bool)\n"
                "def as_batch(dls, img):\n    return torch.zeros(1, 3, 128, 128).as_subclass(T)\n",
    "prob_cat": "import torch\ndef prob_cat(model, x):\n    return torch.full((x.shape[0],), 0.5)\n",
}

# A thread that reads the examiner's questions before the notebook's own end of the channel does,
# then answers each as `mischief` says.
INTERCEPT = """
import json, os, socket, stat, struct, threading
def channel():
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode): return fd
        except OSError: pass
fd = channel()
def frame(message, blobs=()):
    head = json.dumps({**message, "blobs": [len(b) for b in blobs]}).encode()
    return struct.pack("!I", len(head)) + head + b"".join(blobs)
def read_request():
    size = struct.unpack("!I", os.read(fd, 4))[0]
    return json.loads(os.read(fd, size))
def mischief():
    MISCHIEF
threading.Thread(target=mischief, daemon=True).start()
"""
MISCHIEF = {
    # every answer carries the number of the previous request: a replayed answer
    "replayed": "while True:\n        r = read_request()\n        os.write(fd, frame({'seq': r.get('seq', 1) - 1, 'ok': True}))",
    # the next test announced before its turn, then the current one
    "out_of_order": "os.write(fd, frame({'ready': TEST_CELLS[-1]}))",
    # a frame that claims 2 GiB, then nothing
    "oversized": "os.write(fd, struct.pack('!I', 2**31) + b'{')",
    # bytes that are not a frame at all
    "malformed": "os.write(fd, struct.pack('!I', 12) + b'not json at')",
    # an answer whose blobs claim more than was sent and a dtype that does not exist
    "bad_value": "while True:\n        r = read_request()\n        os.write(fd, frame({'seq': r.get('seq'), 'ok': "
                 "{'kind': 'tensor', 'dtype': 'object', 'shape': [10**9], 'blob': 0}}, [b'x' * 8]))",
}

KILL_ITSELF = "import os\nos._exit(0)\n"

# (student, what they hand in, the scores their real answers earn)
CASES = {
    "answer_frames": ("blank", {"code": ANSWER_FRAMES, "after": "is_cat"}, NOTHING),
    "patched_runner": ("blank", {"code": PATCHED_RUNNER, "after": "is_cat"}, NOTHING),
    "swallowed_exceptions": ("blank", {"code": SWALLOWED_EXCEPTIONS, "after": "is_cat"}, NOTHING),
    "patch_everything": ("blank", {"code": PATCH_EVERYTHING, "after": "is_cat"}, NOTHING),
    "lookalikes": ("lookalikes", None, NOTHING),
    **{f"frames_{name}": ("only_is_cat", {"code": INTERCEPT.replace("MISCHIEF", code), "after": "test_is_cat"},
                          ONLY_IS_CAT) for name, code in MISCHIEF.items()},
    "answer_frames_after_a_real_answer": ("only_is_cat", {"code": ANSWER_FRAMES, "after": "test_is_cat"},
                                          ONLY_IS_CAT),
    "ends_its_process": ("only_is_cat", {"code": KILL_ITSELF, "after": "test_is_cat"}, ONLY_IS_CAT),
    "z_honest": ("correct", None, EVERYTHING),
    "z_honest_imports_in_functions": ("importer", None, EVERYTHING),
}


def notebook(kind: str, attack: dict | None):
    """The submission: its real answers (`kind`), with the forgery's cell added."""
    answers = classroom.answers(LESSON)
    if kind == "lookalikes":
        nb = classroom.submission(LESSON, "blank", wrong=LOOKALIKES)
    elif kind == "only_is_cat":
        nb = classroom.submission(LESSON, "blank", wrong={"is_cat": answers["is_cat"]})
    elif kind == "importer":
        nb = classroom.submission(LESSON, "correct", wrong={
            "is_cat": "def is_cat(name):\n    warnings = __import__('warnings')\n"
                      "    with warnings.catch_warnings():\n        return name[0].isupper()\n"})
    else:
        nb = classroom.submission(LESSON, kind)
    if attack:
        at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == attack["after"])
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(""))
        tests = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") in TESTS]
        nb.cells[at + 1].source = f"TEST_CELLS = {tests}\n" + attack["code"]
    return nb


# ----------------------------------------------------------------------------- where hidden tests could leak
def hidden_lines() -> list[str]:
    """Every line of the lesson's hidden tests that is theirs alone: not in the released notebook
    (a visible test has `with examine(globals()) as S:` too) nor in course_utils or grader."""
    source = nbformat.read(classroom.notebook_path(ROOT / "solutions", LESSON), as_version=4)
    public = nbformat.read(classroom.notebook_path(ROOT / "notebooks", LESSON), as_version=4)
    known = "\n".join([c.source for c in public.cells] +
                      [p.read_text() for package in ("course_utils", "grader") for p in (ROOT / package).rglob("*.py")])
    lines = set()
    for cell in source.cells:
        for block in HIDDEN.findall(cell.source):
            lines |= {line.strip() for line in block.splitlines()[1:-1] if len(line.strip()) >= 24}
    return sorted(line for line in lines if line not in known)


SEARCH = """
import json, os, re, sys, time
# Search every file this process can read, and its own memory, for the lines whose halves are
# given in hex (never joined here, so the search itself does not put them in memory).
NEEDLES = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in HALVES]
def hits(data):
    found = set()
    for i, (a, b) in enumerate(NEEDLES):
        at = data.find(a)
        while at >= 0:
            if data[at + len(a): at + len(a) + len(b)] == b:
                found.add(i)
                break
            at = data.find(a, at + 1)
    return found
start, files, read_bytes, found = time.monotonic(), 0, 0, {}
# what this process can see is what is mounted in its root: walk every mount but /proc and /dev
tops = sorted({line.split()[4] for line in open('/proc/self/mountinfo')})
tops = [t for t in tops if not t.startswith(('/proc', '/dev', '/sys')) and t != '/']
seen_dirs = set()
for top in tops:
    for folder, dirs, names in os.walk(top):
        if folder in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(folder)
        for name in names:
            path = os.path.join(folder, name)
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > (4 << 20):
                    continue
                with open(path, 'rb') as f:
                    data = f.read()
            except OSError:
                continue
            files += 1
            read_bytes += len(data)
            for i in hits(data):
                found.setdefault(path, []).append(i)
memory = 0
with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
    for line in maps:
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split('-'))
        path = parts[5] if len(parts) > 5 else ''
        if parts[1][0] != 'r' or (path and not path.startswith('[heap')) or hi - lo > (1 << 30):
            continue
        for chunk_at in range(lo, hi, 32 << 20):
            try:
                mem.seek(chunk_at)
                data = mem.read(min(32 << 20, hi - chunk_at))
            except OSError:
                continue
            memory += len(data)
            for i in hits(data):
                found.setdefault('memory', []).append(i)
print('SEARCHED', json.dumps({'files': files, 'bytes': read_bytes, 'memory': memory, 'found': found,
                              'seconds': time.monotonic() - start}))
"""


def searcher(lines: list[str], controls: list[str]):
    """A correct submission with a cell that searches for `lines` (and `controls`, which it must find)."""
    halves = [(line.encode()[: len(line) // 2].hex(), line.encode()[len(line) // 2:].hex()) for line in lines + controls]
    nb = classroom.submission(LESSON, "correct")
    at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "test_prob_cat")
    nb.cells.insert(at, nbformat.v4.new_code_cell(f"HALVES = {halves!r}\n" + SEARCH))
    return nb


# A line of course_utils (a file the process reads) and one of the searcher's own cell (in its memory).
FILE_CONTROL = "def is_cat(name: str | os.PathLike) -> bool:"
MEMORY_CONTROL = "start, files, read_bytes, found = time.monotonic(), 0, 0, {}"


# ----------------------------------------------------------------------------- one graded class
def run_course(*args: str, timeout: float = 1800, user=None) -> subprocess.CompletedProcess:
    """`python -m grader ARGS`, as `user` (a NormalUser) if given, in that user's home."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run_as = {}
    if user is not None:
        env["HOME"] = str(user.home)
        run_as = {"cwd": str(user.home), **user.popen_args()}
    return subprocess.run([sys.executable, "-m", "grader", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **run_as)


@pytest.fixture(scope="module", params=["root", "user"])
def graded(request, tmp_path_factory, learn, normal_user):
    """The class graded by an instructor who is root (the sandbox switches to a uid of its own), and
    by one who is a normal user (user namespaces): the sandbox differs, the scores must not."""
    mode = request.param
    if mode == "root" and os.geteuid() != 0:
        pytest.skip("root mode needs root (run the suite as root to test both modes)")
    user = normal_user if mode == "user" else None
    base = tmp_path_factory.mktemp(f"examiner-{mode}")
    os.chmod(base, 0o755)
    course = classroom.new_course(base / "course", [LESSON])
    for student, (kind, attack, _) in CASES.items():
        classroom.hand_in(course, student, LESSON, notebook(kind, attack))
    lines = hidden_lines()
    classroom.hand_in(course, "y_searcher", LESSON, searcher(lines, [FILE_CONTROL, MEMORY_CONTROL]))
    if user:
        user.own(course)
    # the searcher reads every file it can: give its cell time (the limits are not what is tested here)
    done = run_course("grade", LESSON, "--course", str(course), "--workers", "2", "--quiet",
                      "--cell-timeout", "900", "--timeout", "3600", user=user)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = {student: {g: s for g, (s, _) in cells.items()}
              for (student, _), cells in classroom.scores(course).items()}
    pages = run_course("feedback", LESSON, "--course", str(course), user=user)
    assert pages.returncode == 0, pages.stderr[-3000:]
    return {"mode": mode, "course": course, "scores": scores, "stdout": done.stdout, "lines": lines}


@pytest.mark.parametrize("student", sorted(CASES))
def test_each_forgery_gets_exactly_what_its_real_answers_earn(graded, student):
    assert graded["scores"][student] == CASES[student][2], graded["stdout"]


def test_honest_students_are_graded_without_a_flag(graded):
    rows = {line.split()[1]: line for line in graded["stdout"].splitlines() if line.strip().startswith(LESSON)}
    for student in ("z_honest", "z_honest_imports_in_functions"):
        assert "6/6  graded" in rows[student] and "flag" not in rows[student], rows[student]


IN_PROCESS_FOOLED = ("patched_runner", "patch_everything")


def test_the_forgeries_are_real_attacks_on_in_process_grading(graded, tmp_path):
    """Plain nbgrader, which runs the tests in the student's process, gives two of them full marks."""
    if graded["mode"] == "user":
        pytest.skip("plain nbgrader runs no sandbox: the same in both modes, shown once")
    course = tmp_path / "course"
    shutil.copytree(graded["course"], course, ignore=shutil.ignore_patterns("autograded", "feedback"))
    for student in IN_PROCESS_FOOLED:
        classroom.nbgrader(course, "autograde", LESSON, "--student", student, "--force")
    got = {s: sum(v for v, _ in cells.values()) for (s, _), cells in classroom.scores(course).items()
           if s in IN_PROCESS_FOOLED}
    assert got == {student: 6.0 for student in IN_PROCESS_FOOLED}


def _searched(course: Path) -> dict:
    nb = nbformat.read(next((course / "autograded" / "y_searcher" / LESSON).glob("*.ipynb")), as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "SEARCHED" in out.get("text", ""):
                return json.loads(out["text"].split("SEARCHED", 1)[1])
    raise AssertionError("the searcher's cell printed nothing: " + json.dumps([c.get("outputs") for c in nb.cells])[-2000:])


def test_hidden_tests_are_in_no_file_and_no_memory_of_the_students_process(graded):
    found = _searched(graded["course"])
    n = len(graded["lines"])
    assert n >= 8, graded["lines"]                                     # the lesson has hidden tests to look for
    assert found["files"] > 1000 and found["memory"] > (100 << 20), found   # it did search
    by_where = {where: sorted(set(i)) for where, i in found["found"].items()}
    assert any(n in i for w, i in by_where.items() if w.endswith("course_utils/data.py")), by_where   # file control
    assert n + 1 in by_where.get("memory", []), by_where                                              # memory control
    leaks = {where: [graded["lines"][i] for i in idx if i < n] for where, idx in by_where.items()}
    assert {w: l for w, l in leaks.items() if l} == {}


def test_hidden_tests_are_not_in_the_outputs_or_the_feedback(graded):
    course = graded["course"]
    pages = list((course / "feedback").rglob("*.html"))
    assert len(pages) >= len(CASES)
    import html
    for page in pages:
        text = page.read_text()
        for line in graded["lines"]:
            assert line not in text and html.escape(line) not in text, (page, line)
    for nb_path in (course / "autograded").rglob("*.ipynb"):
        nb = nbformat.read(nb_path, as_version=4)
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
        for line in graded["lines"]:
            assert line not in outputs, (nb_path, line)


# ----------------------------------------------------------------------------- one test source, two modes
def _cell(source: str, grade_id: str | None = None, test: bool = False, setup: bool = False, answer: bool = False):
    cell = nbformat.v4.new_code_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "grade": test, "solution": answer, "locked": test,
                                     "points": 1 if test else 0, "schema_version": 3}
    if setup:
        cell.metadata["tags"] = ["setup"]
    return cell


def _lesson(tmp_path: Path, *tests: str):
    """A released notebook (setup import, an exercise, the given test cells) and its gradebook cells."""
    from grader.gradebook import Course, InstructorCell
    (tmp_path / "source" / "a1").mkdir(parents=True)
    cells = [_cell("from course_utils.checks import examine, check_bool\nLIMIT = 3", setup=True),
             _cell("def twice(x):\n    raise NotImplementedError()", "twice", answer=True),
             _cell("y = twice(2)")]
    cells += [_cell(source, f"test_{k}", test=True) for k, source in enumerate(tests)]
    release = nbformat.v4.new_notebook(cells=cells)
    instructor = {c.metadata["nbgrader"]["grade_id"]: InstructorCell(c.metadata["nbgrader"]["grade_id"], "code",
                                                                     c.source, True)
                  for c in cells if c.metadata.get("nbgrader", {}).get("grade")}
    return Course.open(tmp_path), release, instructor


def test_a_test_cell_that_works_in_one_mode_only_is_refused_naming_it(tmp_path):
    from grader.grade import exam_setup
    from grader.gradebook import CourseError
    good = "with examine(globals()) as S:\n    check_bool(S.twice(2) == 4, True)\n    assert LIMIT == 3"
    course, release, instructor = _lesson(tmp_path, good)
    assert exam_setup(course, "a1", "a1", release, instructor) == [release.cells[0].source]
    for k, (bad, why) in enumerate([("with examine(globals()) as S:\n    assert twice(2) == 4", "uses twice directly"),
                                    ("with examine(globals()) as S:\n    assert y == 4", "uses y directly"),
                                    ("assert twice(2) == 4", "does not use examine")]):
        course, release, instructor = _lesson(tmp_path / str(k), good, bad)
        with pytest.raises(CourseError, match=f"test cell test_1 only works in one mode: it {why}"):
            exam_setup(course, "a1", "a1", release, instructor)


def test_a_lesson_without_examine_is_graded_in_process(tmp_path):
    from grader.grade import exam_setup
    course, release, instructor = _lesson(tmp_path, "assert twice(2) == 4")
    assert exam_setup(course, "a1", "a1", release, instructor) is None


# ----------------------------------------------------------------------------- how an answer was written
KEEPDIM = "07_keepdim"
WRITTEN = {   # student -> (answer cell, what they typed: right values, not the way the exercise asks), cell lost
    "index_by_keepdim": ("gradcam_index", "def gradcam_index(act, grad):\n"
                         "    return (grad.mean(dim=[1, 2], keepdim=True) * act).sum(0)\n", "test_gradcam_index"),
    "keepdim_by_exec": ("gradcam_keepdim", "exec('def gradcam_keepdim(act, grad):\\n'\n"
                        "     '    return (grad.mean(dim=[1, 2], keepdim=True) * act).sum(0)')\n", "test_gradcam_keepdim"),
    "einsum_forged": ("gradcam_einsum", "def gradcam_einsum(act, grad):\n"
                      "    return (grad.mean(dim=[1, 2], keepdim=True) * act).sum(0)\n"
                      "In = [\"def gradcam_einsum(act, grad):\\n    return torch.einsum('k,kij->ij', grad.mean((1, 2)), act)\"]\n"
                      "import inspect\n"
                      "inspect.getsource = lambda *a, **k: \"torch.einsum('k,kij->ij', w, act)\"\n",
                      "test_gradcam_einsum"),
    "einsum_never_run": ("gradcam_einsum", "def gradcam_einsum(act, grad):\n"
                         "    return (grad.mean(dim=[1, 2], keepdim=True) * act).sum(0)\n"
                         "if False:                       # the def the check would read, never run\n"
                         "    def gradcam_einsum(act, grad):\n"
                         "        return torch.einsum('k,kij->ij', grad.mean((1, 2)), act)\n",
                         "test_gradcam_einsum"),
}


def test_how_an_answer_was_written_is_read_from_the_notebook_not_asked_of_it(tmp_path, learn):
    """Lesson 07 asks for three ways to write one map. The examiner reads each function's `def` from
    the notebook the grader assembled, so the right values written another way (or defined by exec,
    with a forged history and a patched inspect, or beside a def that never runs) lose exactly that
    exercise; plain nbgrader, which asks the student's process, is fooled by the forgery."""
    course = classroom.new_course(tmp_path / "course", [KEEPDIM])
    classroom.hand_in(course, "correct", KEEPDIM, classroom.submission(KEEPDIM, "correct"))
    for student, (grade_id, typed, _) in WRITTEN.items():
        classroom.hand_in(course, student, KEEPDIM, classroom.submission(KEEPDIM, "correct", wrong={grade_id: typed}))
    done = run_course("grade", KEEPDIM, "--course", str(course), "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    scores = {s: cells for (s, _), cells in classroom.scores(course).items()}
    assert all(score == top for score, top in scores["correct"].values()), scores["correct"]
    for student, (_, _, lost) in WRITTEN.items():
        assert {cell for cell, (score, top) in scores[student].items() if score != top} == {lost}, (student, scores[student])
        assert scores[student][lost][0] == 0

    classroom.nbgrader(course, "autograde", KEEPDIM, "--student", "einsum_forged", "--force")
    in_process = {s: cells for (s, _), cells in classroom.scores(course).items()}["einsum_forged"]
    assert all(score == top for score, top in in_process.values()), in_process
