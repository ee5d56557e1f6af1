"""The tripwire: each suspicious act leaves its flag with its cell; honest notebooks leave none.

Acts run in a fresh Python process with the hook installed (it cannot be removed, so never in the
test process). The hook function itself is also called directly with forged arguments, re-entered,
and flooded. The honest notebooks (every solution, the example class's honest students, the honest
students of the hostile class of tests/test_grader_grade.py) run as the grader runs them: forked
from a warm process into the sandbox, cells in execnb's CaptureShell, the hook installed after the
shell is made; a few hostile cells run there too, so the flags are known to work inside the sandbox.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from grader import tripwire
from grader.assemble import InstructorCell, assemble
from grader.layout import ROOT
from grader.sandbox import ENV_ALLOWED

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
import example_class  # noqa: E402
from release import lessons  # noqa: E402

RUN_ACTS = textwrap.dedent('''
    import ctypes, fcntl, gc, glob, io, json, os, pathlib, subprocess, sys, tempfile, threading, warnings
    from grader import tripwire
    acts = json.loads(sys.argv[1])
    r, CHANNEL = os.pipe()
    TMP = tempfile.mkdtemp()
    PID = os.getpid()
    wire = tripwire.install([CHANNEL])
    for name, code in acts.items():
        wire.cell = name
        try:
            exec(code, {**globals()})
        except OSError:
            pass                    # the act was tried (the event comes before the system call)
    print(json.dumps(wire.flags()))
''')

# act -> (code, what its flag says); CHANNEL is the grader's channel, TMP a folder of the act's own.
ACTS = {
    "open_channel": ("open(CHANNEL, 'wb', closefd=False)", "opened the grader's channel: descriptor"),
    "fdopen_channel": ("os.fdopen(CHANNEL, 'wb', closefd=False)", "opened the grader's channel: descriptor"),
    "fileio_channel": ("io.FileIO(CHANNEL, 'w', closefd=False)", "opened the grader's channel: descriptor"),
    "proc_fd_channel": ("open(f'/proc/self/fd/{CHANNEL}', 'wb')", "opened the grader's channel: descriptor"),
    "dev_fd_channel": ("open(f'/dev/fd/{CHANNEL}', 'wb')", "through /dev/fd/"),
    "fcntl_channel": ("fcntl.fcntl(CHANNEL, fcntl.F_GETFL)", "used the grader's channel: descriptor"),
    "settrace": ("sys.settrace(lambda *a: None)\nsys.settrace(None)", "set a trace function (sys.settrace"),
    "thread_settrace": ("threading.settrace(lambda *a: None)\nt = threading.Thread(target=len, args=('',))\n"
                        "t.start()\nt.join()\nthreading.settrace(None)", "set a trace function"),
    "setprofile": ("sys.setprofile(lambda *a: None)\nsys.setprofile(None)", "set a profile function (sys.setprofile)"),
    "current_frames": ("sys._current_frames()", "sys._current_frames"),
    "current_exceptions": ("sys._current_exceptions()", "sys._current_exceptions"),
    "addaudithook": ("sys.addaudithook(lambda *a: None)", "added an audit hook"),
    "code_swap": ("def check(x):\n    assert x\ncheck.__code__ = (lambda x: None).__code__",
                  "replaced a function's code (__code__): check"),
    "gc_objects": ("gc.get_objects()", "gc.get_objects"),
    "gc_referrers": ("gc.get_referrers(wire)", "gc.get_referrers"),
    "dlopen": ("ctypes.CDLL('libc.so.6')", "loaded a C library with ctypes: libc.so.6"),
    "dlopen_self": ("ctypes.CDLL(None)", "loaded a C library with ctypes: the program itself"),
    "dlsym": ("libc = ctypes.CDLL(None)\nlibc.ptrace", "looked up a C function with ctypes: ptrace"),
    "pythonapi": ("ctypes.pythonapi.PyFrame_GetBack", "looked up a C function with ctypes: PyFrame_GetBack"),
    "string_at": ("ctypes.string_at(id(wire), 16)", "read raw memory with ctypes"),
    "from_address": ("ctypes.c_long.from_address(id(wire))", "read raw memory with ctypes"),
    "other_environ": ("open('/proc/1/environ', 'rb').read()",
                      "opened another process's /proc entries: /proc/1/environ"),
    "other_pathlib": ("pathlib.Path('/proc/1/cmdline').read_bytes()",
                      "another process's /proc entries: /proc/1/cmdline"),
    "other_bytes": ("open(b'/proc/1/status', 'rb')", "another process's /proc entries: /proc/1/status"),
    "other_relative": ("os.chdir(TMP)\ntry:\n    open(os.path.relpath('/proc/1/maps', TMP))\nfinally:\n    os.chdir('/')",
                       "another process's /proc entries: ../"),         # as deep as TMP is
    "other_os_open": ("os.open('/proc/1/mem', os.O_RDONLY)", "another process's /proc entries: /proc/1/mem"),
    "own_mem": ("open('/proc/self/mem', 'rb')", "opened its own /proc entries: /proc/self/mem"),
    "own_environ": ("open(f'/proc/{PID}/environ', 'rb')", "opened its own /proc entries: /proc/"),
    "own_maps": ("open('/proc/thread-self/maps')", "opened its own /proc entries: /proc/thread-self/maps"),
    "own_fd": ("open('/proc/self/fd/0')", "opened its own /proc entries: /proc/self/fd/0"),
    "own_dir": ("os.open('/proc/self', os.O_RDONLY)", "opened its own /proc entries: /proc/self"),
    "write_proc": ("open('/proc/self/comm', 'w').write('x')", "wrote to its own /proc entries: /proc/self/comm"),
    "system_entry": ("open('/proc/kallsyms')", "opened a system entry of /proc: /proc/kallsyms"),
    "list_proc": ("os.listdir('/proc')", "listed /proc itself: /proc"),
    "glob_environ": ("[open(p, 'rb') for p in glob.glob('/proc/[0-9]*/environ')[:2]]", "listed /proc itself"),
    "list_fds": ("list(os.scandir('/proc/self/fd'))", "listed its own /proc entries: /proc/self/fd"),
    "chdir_proc": ("os.chdir('/proc/1')\nos.chdir('/')", "changed directory into /proc: /proc/1"),
    "symlink": ("os.symlink('/proc/1/environ', TMP + '/notes.txt')", "made a link to /proc: /proc/1/environ ->"),
    "own_pathlike": ("class P:\n    def __fspath__(self):\n        return '/proc/1/environ'\nopen(P())",
                     "another process's /proc entries: /proc/1/environ"),       # the event has __fspath__'s answer
    "str_subclass": ("class S(str):\n    def __eq__(self, o): raise RuntimeError\n    __hash__ = str.__hash__\n"
                     "    def __str__(self): raise RuntimeError\nopen(S('/proc/1/environ'))",
                     "another process's /proc entries: /proc/1/environ"),
    "command": ("subprocess.run(['cat', '/proc/1/cmdline'], capture_output=True)",
                "ran a command that names /proc: cat /proc/1/cmdline"),
    "shell": ("os.system('head -c 1 /proc/1/environ > /dev/null')", "ran a command that names /proc"),
}
# What honest code does: none of it may flag.
HONEST_ACTS = {
    "status": "open('/proc/self/status').read()\nopen(f'/proc/{PID}/statm').read()",
    "thread_stat": "open(f'/proc/self/task/{threading.get_native_id()}/stat').read()",
    "system": "open('/proc/cpuinfo').read()\nopen('/proc/meminfo').read()\nopen('/proc/sys/kernel/osrelease').read()",
    "tasks": "os.listdir('/proc/self/task')",
    "frames": "import inspect\ninspect.stack()\nsys._getframe(0)",
    "warnings": "warnings.warn('careful')\n__import__('warnings').simplefilter('ignore')",
    "files": "p = pathlib.Path(TMP) / 'a.txt'\np.write_text('x')\nopen(p).read()\nos.listdir(TMP)",
    "own_fd": "fd = os.dup(r)\nos.fdopen(fd, 'rb').close()",
    "traceback": "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.format_exc()",
    "command": "subprocess.run(['true'])\nos.system('true')",
    "thread": "t = threading.Thread(target=len, args=('',))\nt.start()\nt.join()",
}


@pytest.fixture(scope="module")
def acted():
    """cell label -> the flags of that cell, for every act and honest act run in one hooked process."""
    acts = {name: code for name, (code, _) in ACTS.items()} | {f"honest_{k}": v for k, v in HONEST_ACTS.items()}
    done = subprocess.run([sys.executable, "-c", RUN_ACTS, json.dumps(acts)], capture_output=True, text=True,
                          timeout=300, cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    by_cell: dict[str, list[str]] = {name: [] for name in acts}
    for flag in json.loads(done.stdout.strip().splitlines()[-1]):
        cell, _, what = flag.partition(": ")
        by_cell.setdefault(cell.removeprefix("cell "), []).append(what)
    return by_cell


@pytest.mark.parametrize("act", ACTS)
def test_each_act_leaves_its_flag_in_its_cell(acted, act):
    assert any(ACTS[act][1] in flag for flag in acted[act]), acted[act]


def test_honest_acts_leave_no_flag(acted):
    assert {k: v for k, v in acted.items() if k.startswith("honest_") and v} == {}


def test_no_act_is_flagged_outside_its_cell(acted):
    assert set(acted) == {*ACTS, *(f"honest_{k}" for k in HONEST_ACTS)}, "a flag without its cell"


# ----------------------------------------------------------------------------- the hook, called directly
def test_forged_and_broken_arguments_never_raise():
    """Is an event with arguments built to break the hook recorded, without raising into the caller?"""
    wire = tripwire.Tripwire([5])

    class Evil(str):
        def __eq__(self, other):
            raise RuntimeError("student code ran in the hook")
        __hash__ = str.__hash__

    wire.hook("open", ())
    wire.hook("open", (Evil("/proc/1/environ"), "r", 0))
    wire.hook("object.__setattr__", (len, Evil("__code__"), None))
    wire.hook("subprocess.Popen", (None, [b"cat", Evil("/proc/1/environ"), object()], None, None))
    wire.hook("sys.settrace", None)
    wire.hook(Evil("open"), ("/proc/1/environ",))
    wire.hook("open", (object(), "r", 0))
    flags = wire.flags()
    assert "before the first cell: the grader's tripwire could not examine an event: open: IndexError" in flags
    assert "before the first cell: opened a file named by an object of its own type (what it named is not known): " \
           "an object of type object" in flags
    assert any("another process's /proc entries: /proc/1/environ" in f for f in flags), flags
    assert any("ran a command that names /proc: cat /proc/1/environ" in f for f in flags), flags
    assert any("set a trace function" in f for f in flags), flags


def test_the_hook_tolerates_being_called_while_it_runs():
    """A check that triggers the hook again (a signal handler's act, say) nests a few levels, then stops."""
    wire = tripwire.Tripwire()
    inner = wire._checks["open"]

    def reentrant(event, args):
        wire.hook(event, args)              # would recurse for ever without the guard
        return inner(event, args)

    wire._checks["open"] = reentrant
    wire.hook("open", ("/proc/1/environ", "r", 0))
    assert wire.flags() == [f"before the first cell: opened another process's /proc entries: /proc/1/environ "
                            f"({tripwire._MAX_DEPTH} times)"]


def test_flags_are_deduplicated_and_bounded_in_number_and_length():
    wire = tripwire.Tripwire()
    wire.cell = 3
    for pid in [p for p in range(10_001) if p != os.getpid()][:10_000]:     # another process's, every one
        wire.hook("open", (f"/proc/{pid}/environ", "r", 0))
    wire.hook("open", ("/proc/1/" + "x" * 5000, "r", 0))
    assert wire.flags() == ["cell 3: opened another process's /proc entries: /proc/0/environ; /proc/1/environ; "
                            "/proc/2/environ and others (10,001 times)"]
    for cell in range(2 * tripwire.MAX_FLAGS):
        wire.cell = cell
        wire.hook("sys.setprofile", ())
    flags = wire.flags()
    assert len(flags) == tripwire.MAX_FLAGS + 1
    most = tripwire.MAX_FLAGS
    assert flags[-1] == f"{most + 1:,} more suspicious acts were not kept (at most {most} are)"
    assert max(len(f) for f in flags) < 3 * (tripwire.MAX_DETAIL + 10) + 200


def test_events_it_does_not_examine_leave_nothing():
    wire = tripwire.Tripwire([5])
    for event, args in [("builtins.id", (1,)), ("sys._getframe", (None,)), ("open", ("/usr/lib/x.py", "r", 0)),
                        ("open", (7, "w", 1)), ("object.__setattr__", (int, "__code__", None)), ("exec", (None,)),
                        ("import", ("warnings", None, [], [], [])), ("ctypes.addressof", (None,))]:
        wire.hook(event, args)
    assert wire.flags() == []


def test_nvidias_library_probed_by_torch_cuda_is_allowed_but_not_libc_through_it():
    """torch.cuda.device_count() loads libnvidia-ml.so.1 and looks up nvml* names; ptrace through it still flags."""
    import ctypes
    nvml = object.__new__(ctypes.CDLL)
    nvml.__dict__["_name"] = "libnvidia-ml.so.1"
    wire = tripwire.Tripwire()
    wire.hook("ctypes.dlopen", ("libnvidia-ml.so.1",))
    wire.hook("ctypes.dlsym", (nvml, "nvmlDeviceGetCount_v2"))
    assert wire.flags() == []
    wire.hook("ctypes.dlsym", (nvml, "ptrace"))
    assert wire.flags() == ["before the first cell: looked up a C function with ctypes: ptrace"]


def test_channel_descriptors_must_be_ints():
    with pytest.raises(TypeError, match="channel_fds must be file descriptors"):
        tripwire.Tripwire(["5"])


# ----------------------------------------------------------------------------- honest notebooks, as graded
RUN_NOTEBOOKS = textwrap.dedent('''
    import importlib, json, os, sys, tempfile, time, warnings
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    import matplotlib
    matplotlib.use("Agg")
    for name in ("fastai.vision.all", "fastai.text.all", "course_utils", "course_utils.cam", "course_utils.checks",
                 "course_utils.model", "course_utils.data", "course_utils.viz", "course_utils.text", "execnb.shell",
                 "matplotlib_inline.backend_inline", "torchvision"):
        importlib.import_module(name)                       # the worker's warm imports, then a fork per run
    from grader import sandbox, tripwire
    jobs, course, scratch = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]

    def child(sources, fd):
        import torch
        torch.set_num_threads(1)
        from execnb.shell import CaptureShell
        shell = CaptureShell(path=os.getcwd(), mpl_format="png")
        sys.path[:] = [p for p in sys.path if p and os.path.isabs(p)]
        wire = tripwire.install([fd])
        errors = []
        for index, source in enumerate(sources):
            wire.cell = index
            outputs = shell.run(source, timeout=900, grace=0.1)
            errors += [f"{index}: {o['ename']}" for o in outputs if o.get("output_type") == "error"]
        report = json.dumps({"flags": wire.flags(), "errors": errors, "ran": len(sources)}).encode()
        os.write(fd, b"\\0RESULT" + report)                 # after whatever a hostile cell wrote here

    results = {}
    for name, sources in jobs.items():
        r, w = os.pipe()
        stage = tempfile.mkdtemp(dir=scratch)
        policy = sandbox.Policy(readable=sandbox.readable_paths(course), stage=stage, workdir=stage,
                                limits=sandbox.Limits(cell_seconds=900, notebook_seconds=3600))
        run = sandbox.start(policy, lambda: child(sources, w), keep_fds=(w,))
        os.close(w)
        data = b""
        while chunk := os.read(r, 1 << 20):
            data += chunk
        os.close(r)
        report = run.stop(grace=10)
        _, found, result = data.rpartition(b"\\0RESULT")
        results[name] = json.loads(result) if found else {"lost": report}
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps(results))
''')
# Students of examples/class who hand in something dishonest (tools/example_class.py PLANS); the rest are honest.
DISHONEST_PLANS = {"writer", "tamper", "loop"}
# Honest students of the hostile class of tests/test_grader_grade.py (build_class).
HONEST_IN_HOSTILE_CLASS = ("solver", "blank", "testsdeleted", "lockededited", "stripped", "renamed", "bigoutput",
                           "noisy")
HOSTILE_CELLS = {
    "snoop": "import glob\nfor p in glob.glob('/proc/[0-9]*/environ'):\n    try:\n        open(p, 'rb').read()\n"
             "    except OSError:\n        pass\n",
    "forge": "import os\nfor fd in range(3, 64):\n    try:\n        os.fdopen(fd, 'wb', closefd=False)\n"
             "    except OSError:\n        pass\n",
    "libc": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.ptrace(16, 1, 0, 0)\n",
}


def assembled_cells(nb, lesson: str) -> list[str]:
    """The code cells the grader runs for this submission: assembled with the lesson's tests (hidden ones too)."""
    source = nbformat.read(classroom.notebook_path(ROOT / "solutions", lesson), as_version=4)
    release = nbformat.read(classroom.notebook_path(ROOT / "notebooks", lesson), as_version=4)
    instructor = {m["grade_id"]: InstructorCell(m["grade_id"], c.cell_type, c.source, bool(m.get("locked")))
                  for c in source.cells if (m := c.metadata.get("nbgrader", {})).get("grade_id")}
    return [c.source for c in assemble(nb, release, instructor).notebook.cells if c.cell_type == "code"]


def honest_notebooks(tmp_path: Path) -> dict[str, list[str]]:
    """Every distinct honest notebook (ignoring nbgrader's solution markers), by a name saying where it is from."""
    found = {f"solutions/{lesson}": [c.source for c in nbformat.read(
        classroom.notebook_path(ROOT / "solutions", lesson), as_version=4).cells if c.cell_type == "code"]
        for lesson in lessons()}
    for student, plans in example_class.PLANS.items():
        for lesson, plan in plans.items():
            if plan not in DISHONEST_PLANS:
                nb = example_class.notebook(lesson, plan)
                found[f"examples/class {student} {lesson}"] = assembled_cells(nb, lesson)
    from test_grader_grade import LESSON, build_class
    build_class(tmp_path, tmp_path, 9)
    for student in HONEST_IN_HOSTILE_CLASS:
        path, = (tmp_path / "submitted" / student / LESSON).glob("*.ipynb")
        found[f"hostile class {student}"] = assembled_cells(nbformat.read(path, as_version=4), LESSON)
    unique, seen = {}, set()
    for name, cells in found.items():
        key = hashlib.sha256(json.dumps([classroom._MARKERS.sub("", c) for c in cells]).encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            unique[name] = cells
    return unique


@pytest.fixture(scope="module")
def graded_runs(tmp_path_factory, learn):
    """Each honest notebook, and the hostile cells, run sandboxed with the tripwire (several minutes)."""
    from course_utils.data import cache_dir
    base = tmp_path_factory.mktemp("tripwire")
    os.chmod(base, 0o755)
    jobs = honest_notebooks(base / "hostile-class")
    jobs |= {f"attack {name}": [code] for name, code in HOSTILE_CELLS.items()}
    (base / "jobs.json").write_text(json.dumps(jobs))
    (base / "course").mkdir()
    (base / "scratch").mkdir()
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWED or k.startswith("LC_")}
    env.update(PYTHONPATH=str(ROOT), COURSE_CACHE=str(cache_dir()), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    done = subprocess.run([sys.executable, "-P", "-c", RUN_NOTEBOOKS, str(base / "jobs.json"), str(base / "course"),
                           str(base / "scratch")], env=env, cwd="/", capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return jobs, json.loads(done.stdout.strip().splitlines()[-1])


def test_honest_notebooks_run_to_the_end_without_a_flag(graded_runs):
    jobs, runs = graded_runs
    honest = [name for name in jobs if not name.startswith("attack ")]
    assert {f"solutions/{lesson}" for lesson in lessons()} <= set(honest)
    assert any(name.startswith("examples/class") for name in honest)
    assert any(name.startswith("hostile class") for name in honest)
    for name in honest:
        assert runs[name].get("ran") == len(jobs[name]), f"{name} did not run to the end: {runs[name]}"
    assert {name: runs[name]["flags"] for name in honest if runs[name]["flags"]} == {}
    solutions = [name for name in honest if name.startswith("solutions/")]
    assert {name: runs[name]["errors"] for name in solutions if runs[name]["errors"]} == {}


def test_hostile_cells_are_flagged_inside_the_sandbox(graded_runs):
    _, runs = graded_runs
    assert any("opened another process's /proc entries: /proc/1/environ" in f for f in runs["attack snoop"]["flags"])
    assert any("listed /proc itself" in f for f in runs["attack snoop"]["flags"])
    assert any("opened the grader's channel" in f for f in runs["attack forge"]["flags"])
    assert [f.split(": ")[1] for f in runs["attack libc"]["flags"]] == ["loaded a C library with ctypes",
                                                                          "looked up a C function with ctypes"]
