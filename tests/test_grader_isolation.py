"""Students who have read the grader's source attack the grader itself; `course grade` must hold.

One class of lesson 02, graded with `--workers 1` (so one worker grades everyone, one after the
other) and `--memory 1024`, twice: as root (the sandbox switches to a uid of its own) and as a normal
user (a throw-away user, with user namespaces). Each hostile student tries what the sandbox-hardening
issue saw succeed, in the spellings someone who knows the code would use, and prints what it found
as a `PROBE {json}` line; the grader runs with a secret in its environment, a canary process of the
instructor's, a root-owned Unix socket open to all and a 0600 secret file in the model cache.
"""
from __future__ import annotations

import csv
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grader.layout import ROOT
from grader.sandbox import ENV_ALLOWED

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from conftest import CountingServer  # noqa: E402

LESSON = "02_forward_hooks"
FULL = 5.0
MEMORY_MB = 1024
ESCAPEE = "4242.25"          # `sleep 4242.25`: a process a student tries to leave behind


def cell_after(nb, *sources: str):
    """The notebook with the student's own code cells added at the end."""
    nb.cells.extend(classroom.nbformat.v4.new_code_cell(s) for s in sources)
    return nb


PROBE_FDS = """
import os, json
fds = {}
for fd in range(3, 1 << 16):
    try:
        os.fstat(fd)
    except OSError:
        continue
    try:
        fds[fd] = os.readlink(f'/proc/self/fd/{fd}')
    except OSError as e:
        fds[fd] = type(e).__name__
print('PROBE', json.dumps({'fds': fds}))
"""

FORGE = """
import os, json, struct
# An answer for a classmate, in the worker's answer format, and cell reports in the run's format,
# written on every descriptor this process has (fd 3 was the worker's answer pipe).
frames = [{"key": "02_forward_hooks/z_solver", "notebooks": {}, "worker_rss_bytes": 0},
          {"key": "02_forward_hooks/a_forger", "notebooks": {}, "worker_rss_bytes": 0},
          {"done": 0, "outputs": [], "seconds": 0.0}, {"finished": True}]
for fd in range(3, 1 << 16):
    for frame in frames:
        data = json.dumps(frame).encode()
        try:
            os.write(fd, struct.pack("!Q", len(data)) + data)
        except OSError:
            break
"""

KILL = """
import os, json, signal, ctypes
libc = ctypes.CDLL(None, use_errno=True)
send = getattr(os, 'ki' + 'll')
me, group = os.getpid(), os.getpgid(0)
mine = {int(t) for t in os.listdir('/proc/self/task')} | {me, group}     # its own threads, itself
done = {'kill(-1)': 0, 'kill(parent)': 0, 'kill(pid)': 0, 'killpg': 0, 'ptrace': 0}
def attempt(name, action):
    try:
        action()
        done[name] += 1
    except OSError:
        pass
attempt('kill(-1)', lambda: send(-1, signal.SIGKILL))
attempt('kill(parent)', lambda: send(os.getppid(), signal.SIGKILL))
attempt('kill(parent)', lambda: send(os.getppid(), signal.SIGTERM))
attempt('kill(parent)', lambda: send(os.getppid(), signal.SIGINT))
for pid in range(1, 1 << 17):
    if pid not in mine:
        attempt('kill(pid)', lambda: send(pid, signal.SIGKILL))
        attempt('killpg', lambda: os.killpg(pid, signal.SIGKILL))
    if pid not in mine and libc.ptrace(16, pid, 0, 0) == 0:        # PTRACE_ATTACH
        done['ptrace'] += 1
        libc.ptrace(17, pid, 0, 0)                             # PTRACE_DETACH
print('PROBE', json.dumps(done))
"""

SNOOP = """
import os, json, glob
found = {'environ': sorted(os.environ), 'proc_environ': [], 'secret_in': [], 'read': {}}
for path in glob.glob('/proc/*/environ'):
    try:
        data = open(path, 'rb').read()
    except OSError:
        continue
    found['proc_environ'] += [e.split(b'=')[0].decode() for e in data.split(b'\\0') if e]
    if SECRET.encode() in data:
        found['secret_in'].append(path)
for path in PATHS:
    try:
        with open(path, 'rb') as f:
            found['read'][path] = 'READ ' + f.read(40).decode(errors='replace')
    except OSError as e:
        found['read'][path] = type(e).__name__
for path in FOLDERS:
    try:
        found['read'][path] = 'LISTED ' + ' '.join(sorted(os.listdir(path))[:5])
    except OSError as e:
        found['read'][path] = type(e).__name__
found['proc_environ'] = sorted(set(found['proc_environ']))
print('PROBE', json.dumps(found))
"""

ROADS = """
import os, json, socket, time
found = {}
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCKET)
    found['socket'] = 'CONNECTED'
except OSError as e:
    found['socket'] = type(e).__name__
try:                                       # the grader's warm pool: ask it for a worker's pipes
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(POOL_SOCKET)
    s.send(json.dumps({'op': 'lease'}).encode())
    data, fds, _, _ = socket.recv_fds(s, 1 << 16, 2)
    found['pool'] = 'LEASED' if fds else 'ANSWERED ' + data.decode(errors='replace')
except OSError as e:
    found['pool'] = type(e).__name__
for path in OTHERS:
    try:
        os.stat(path)
        found[path] = 'STAT ' + ' '.join(os.listdir(path))
    except OSError as e:
        found[path] = type(e).__name__
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sleep', ['sleep', ESCAPEE])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.5)
print('PROBE', json.dumps(found))
"""

MEMHOG = """
import os, time
# Children that each hold 400 MB, and memfd files no process maps, 60 MB each (under the file limit).
for _ in range(3):
    if os.fork() == 0:
        hog = [b'x' * (50 << 20) for _ in range(8)]
        time.sleep(120)
        os._exit(0)
files = []
for _ in range(40):
    fd = os.memfd_create('hog')
    os.write(fd, b'y' * (60 << 20))
    files.append(fd)
time.sleep(120)
"""


def build_class(course: Path, env: dict) -> None:
    """Hand in the hostile class; `env` holds what the students 'know' (paths, the secret's value)."""
    known = "".join(f"{k} = {v!r}\n" for k, v in env.items())
    correct = lambda: classroom.submission(LESSON, "correct")      # noqa: E731
    hand = lambda student, nb: classroom.hand_in(course, student, LESSON, nb)   # noqa: E731
    hand("a_forger", cell_after(classroom.submission(LESSON, "blank"), PROBE_FDS, FORGE))
    hand("b_killer", cell_after(correct(), KILL))
    hand("c_snoop", cell_after(correct(), known + SNOOP))
    hand("d_roads", cell_after(correct(), known + ROADS))
    hand("e_memhog", cell_after(correct(), MEMHOG))
    hand("z_solver", correct())


def probe(course: Path, student: str) -> dict:
    """The JSON a student's notebook printed after 'PROBE ' (every such line merged)."""
    nb = classroom.nbformat.read(course / "autograded" / student / LESSON / f"{LESSON}.ipynb", as_version=4)
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in "".join(out.get("text", "")).splitlines() if out.output_type == "stream" else []:
                if line.startswith("PROBE "):
                    found.update(json.loads(line[6:]))
    return found


class UnixListener(CountingServer):
    """A root-owned Unix socket that anyone may connect to, counting connections."""

    def __init__(self, path: Path):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        os.chmod(path, 0o666)
        sock.listen()
        self.path = path
        super().__init__(sock)


def escapees() -> list[str]:
    """Processes on this machine that run the student's `sleep ESCAPEE`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == f"sleep\0{ESCAPEE}\0".encode():
                found.append(proc.name)
        except OSError:
            pass
    return found


def grader_env(home: Path, tmp: Path, secret: str) -> dict:
    from course_utils.data import cache_dir
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmp),
            "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT), "COURSE_CACHE": str(cache_dir()),
            "INSTRUCTOR_API_TOKEN": secret, "AWS_SECRET_ACCESS_KEY": secret}


@pytest.fixture(scope="module", params=["root", "user"])
def graded(request, tmp_path_factory, normal_user):
    """Grade the hostile class in one mode; returns what the tests inspect."""
    from course_utils.data import cache_dir
    mode = request.param
    if mode == "root" and os.geteuid() != 0:
        pytest.skip("root mode needs root (run the suite as root to test both modes)")
    user = normal_user if mode == "user" else None
    base = tmp_path_factory.mktemp(f"isolation-{mode}")
    os.chmod(base, 0o755)
    course = classroom.new_course(base / "course", [LESSON])
    home = user.home if user else base / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- instructor's key")
    tmp = base / "tmp"
    tmp.mkdir()
    sock_dir = base / "run"
    sock_dir.mkdir()
    listener = UnixListener(sock_dir / "grader.sock")
    secret_file = cache_dir() / f"instructor-secret-{os.getpid()}.txt"
    secret_file.write_text("root's 0600 secret")
    os.chmod(secret_file, 0o600)
    secret = "tok-" + secrets.token_hex(12)
    pool = tmp / f"cnn-cam-course-pool-{user.uid if user else os.getuid()}"   # where `course grade` puts its pool
    build_class(course, {
        "SECRET": secret, "SOCKET": str(listener.path), "ESCAPEE": ESCAPEE,
        "PATHS": [str(secret_file), str(home / ".ssh" / "id_ed25519"), "/etc/shadow",
                  str(course / "gradebook.db"), str(course / "source" / LESSON / f"{LESSON}.ipynb")],
        "FOLDERS": [str(home), str(home / ".ssh"), "/root", str(course), "/run", str(tmp)],
        "OTHERS": [str(course / "submitted" / "z_solver" / LESSON), str(course / "submitted"), str(base), str(pool)],
        "POOL_SOCKET": str(pool / "pool.sock")})
    if user:
        user.own(course), user.own(tmp)
        for p in (home, home / ".ssh", home / ".ssh" / "id_ed25519"):
            os.chown(p, user.uid, user.gid)
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    run_as = user.popen_args() if user else {}
    canary = subprocess.Popen(["sleep", "900"], **run_as)
    try:
        done = subprocess.run([sys.executable, "-m", "grader", "grade", LESSON, "--course", str(course),
                               "--workers", "1", "--memory", str(MEMORY_MB), "--quiet"],
                              env=grader_env(home, tmp, secret), cwd=str(home), capture_output=True, text=True,
                              timeout=1200, **run_as)
        canary_alive = canary.poll() is None
        left = escapees()
    finally:
        # the hostile class was graded through the grader's warm pool (the default): stop it, as its user
        subprocess.run([sys.executable, "-m", "grader", "workers", "stop"], env=grader_env(home, tmp, secret),
                       cwd=str(home), capture_output=True, text=True, timeout=60, **run_as)
        canary.kill()
        canary.wait()
        secret_file.unlink()
        listener.sock.close()
    rows = {}
    if done.returncode == 0:
        export = course / "grades.csv"
        exported = subprocess.run([sys.executable, "-m", "grader", "export", LESSON, "--course", str(course),
                                   "--to", str(export), "--include-unreviewed"],     # flagged scores too
                                  env=grader_env(home, tmp, secret), cwd=str(home),
                                  capture_output=True, text=True, **run_as)
        assert exported.returncode == 0, exported.stderr[-2000:]
        with open(export, newline="") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return {"mode": mode, "done": done, "course": course, "rows": rows, "secret": secret, "tmp": tmp,
            "canary_alive": canary_alive, "escapees": left, "listener": listener, "home": home}


def test_the_run_finished_and_printed_its_layers(graded):
    done = graded["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sandbox layers on this machine" in done.stderr
    for layer in ("network", "pid", "mount", "landlock", "privileges", "limits"):
        assert re.search(rf"^\s+{layer}\s+on\b", done.stderr, re.M), f"{layer} not on:\n{done.stderr}"


# Finding 1: a student can set anyone's score through an inherited descriptor.
def test_no_descriptor_is_inherited_but_the_runs_own_channel(graded):
    fds = probe(graded["course"], "a_forger")["fds"]
    pipes = [target for target in fds.values() if target.startswith("pipe:")]
    assert len(pipes) == 1, f"the notebook process holds more than its own channel: {fds}"


def test_forged_frames_on_every_descriptor_set_no_score(graded):
    rows = graded["rows"]
    assert float(rows["z_solver"]["score"]) == FULL, rows["z_solver"]
    assert float(rows["a_forger"]["score"]) == 0, rows["a_forger"]


# Finding 2: one cell ends the whole grading run (kill(-1), killpg, the parent, ptrace).
def test_signals_and_ptrace_reach_nothing_outside_the_run(graded):
    assert graded["done"].returncode == 0 and graded["canary_alive"]
    done = probe(graded["course"], "b_killer")
    assert done["ptrace"] == 0, done
    assert float(graded["rows"]["b_killer"]["score"]) == FULL
    for student in ("c_snoop", "d_roads", "z_solver"):           # graded after it, by the same worker
        assert float(graded["rows"][student]["score"]) == FULL, graded["rows"][student]


# Finding 3: the instructor's secrets are readable.
def test_the_environment_is_the_allow_list(graded):
    found = probe(graded["course"], "c_snoop")
    allowed = set(ENV_ALLOWED)
    assert set(found["environ"]) <= allowed, set(found["environ"]) - allowed
    assert set(n for n in found["proc_environ"] if not n.startswith("LC_")) <= allowed, found["proc_environ"]
    assert found["secret_in"] == []
    assert graded["secret"] not in json.dumps(found)


def test_secret_files_and_the_home_folder_are_out_of_reach(graded):
    read = probe(graded["course"], "c_snoop")["read"]
    assert read and not any(v.startswith(("READ", "LISTED")) for v in read.values()), read


# Finding 4: other roads to the host.
def test_no_pathname_socket_no_other_students_folder(graded):
    found = probe(graded["course"], "d_roads")
    assert found["socket"] in ("FileNotFoundError", "PermissionError", "ConnectionRefusedError"), found
    assert graded["listener"].connections == 0
    assert found["pool"] in ("FileNotFoundError", "PermissionError", "ConnectionRefusedError"), found
    others = {k: v for k, v in found.items() if k not in ("socket", "pool")}
    assert others and not any(v.startswith("STAT") for v in others.values()), others


def test_no_student_process_or_scratch_folder_is_left(graded):
    assert graded["escapees"] == [], "a double-forked, setsid process survived the run"
    # torch's cache, and the warm pool's folder (its socket is gone once `course workers stop` ran) may stay
    kept = ("torchinductor_", "cnn-cam-course-pool-")
    left = [p.name for p in graded["tmp"].iterdir() if not p.name.startswith(kept)]
    assert left == [], "the grader left its scratch folders behind"
    pools = [p for p in graded["tmp"].iterdir() if p.name.startswith("cnn-cam-course-pool-")]
    assert pools and not [p for p in pools if (p / "pool.sock").exists()], "the class was graded without a pool, or it still runs"


# Finding 5: the memory limit is per process, not per notebook.
def test_memory_is_limited_per_notebook_and_the_row_says_so(graded):
    row = graded["rows"]["e_memhog"]
    assert float(row["score"]) == FULL, row                 # the hog was its own last cell
    found = re.search(r"its processes held ([\d,]+) MB, over the notebook's memory limit of ([\d,]+) MB",
                      row["reasons"])
    assert found, row["reasons"]
    held, limit = (int(g.replace(",", "")) for g in found.groups())
    assert limit == MEMORY_MB and MEMORY_MB < held <= 1.25 * MEMORY_MB, row["reasons"]


# Finding 6: Landlock and open_by_handle_at still hold (checked directly in test_grader_sandbox.py).


def run_without_user_namespaces(user, args: list[str], env: dict, out: Path) -> tuple[int, str]:
    """Run a command as `user` inside a user namespace that may create no further user namespace
    (its `user.max_user_namespaces` is 0): a machine without unprivileged user namespaces, seen from
    inside. Returns (exit code, stderr)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r), os.close(go_w)
            if libc.unshare(0x10000000) != 0:
                os._exit(90)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(ready_w, b"u")
            os.read(go_r, 1)
            Path("/proc/sys/user/max_user_namespaces").write_text("0")
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.chdir(user.home)
            os.execve(sys.executable, [sys.executable, *args], env)
        except BaseException as e:
            os.write(fd, f"could not start: {e!r}".encode())
        finally:
            os._exit(91)
    os.close(ready_w), os.close(go_r)
    os.read(ready_r, 1)
    Path(f"/proc/{pid}/uid_map").write_text(f"{user.uid} {user.uid} 1")
    Path(f"/proc/{pid}/gid_map").write_text(f"{user.gid} {user.gid} 1")
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.read_text() if out.exists() else ""


def test_a_machine_without_user_namespaces_is_refused_with_the_fix(normal_user, tmp_path):
    """As a normal user with no user namespaces, `course grade` exits 3 naming the missing layers."""
    if os.geteuid() != 0:
        pytest.skip("making a world without user namespaces needs root; as a normal user the refusal is "
                    "tested only where the machine itself lacks them")
    os.chmod(tmp_path, 0o755)
    course = classroom.new_course(tmp_path / "course", [LESSON])
    classroom.hand_in(course, "someone", LESSON, classroom.submission(LESSON, "correct"))
    normal_user.own(course)
    out = tmp_path / "stderr.txt"
    code, stderr = run_without_user_namespaces(normal_user, ["-m", "grader", "grade", LESSON, "--course",
                                                             str(course), "--quiet"],
                                               grader_env(normal_user.home, tmp_path, "x"), out)
    assert code == 3, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "cannot isolate student notebooks" in stderr and "user namespaces" in stderr, stderr
    assert "--without" in stderr and "--no-sandbox" in stderr
    assert not (course / "autograded").exists(), "nothing may be graded when the sandbox is refused"
