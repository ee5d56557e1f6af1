"""Shared fixtures: the default offline model, and one nbgrader course graded by real nbgrader."""
import os
import shutil
import sys
from pathlib import Path

import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_pool(tmp_path_factory):
    """`course grade` in the tests leases from a warm pool of the test session's own (never the
    instructor's real one), stopped when the session ends. Library calls of `grade()` use no pool."""
    from grader import pool
    folder = tmp_path_factory.mktemp("warm-pool")
    os.chmod(folder, 0o700)
    before = os.environ.get(pool.DIR_ENV)
    os.environ[pool.DIR_ENV] = str(folder)
    yield folder
    pool.stop(folder)
    if before is None:
        os.environ.pop(pool.DIR_ENV, None)
    else:
        os.environ[pool.DIR_ENV] = before


@pytest.fixture(scope="session")
def learn():
    """The course's default Learner (offline: compact_cnn on SynthPets, from the on-disk cache)."""
    from course_utils.model import get_learner
    return get_learner(online=False)   # tests never download, whatever $COURSE_ONLINE says


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium for the browser tests; never skipped (CI must run them)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser tests need Debian's chromium: run them with `make test` (it installs it "
                    "with tools/browser.sh) or `sudo apt-get install chromium`")
    return path


@pytest.fixture(scope="session")
def graded(tmp_path_factory, learn):
    """Every lesson graded by serial `nbgrader autograde` (a real kernel per notebook) for three
    students: `solver` hands in the solutions, `blank` the release untouched, `onewrong` the
    solutions with one exercise broken in some lessons (classroom.ONE_WRONG). Returns (course, scores) where
    scores[(student, lesson)] = {grade_id: (score, max_score)}. The course keeps a copy of the
    gradebook as it was before autograding, `gradebook-generated.db`, for other graders."""
    course = classroom.new_course(tmp_path_factory.mktemp("course"), lessons())
    shutil.copy(course / "gradebook.db", course / "gradebook-generated.db")
    for lesson in lessons():
        for student, origin in (("solver", course / "source"), ("blank", course / "release")):
            shutil.copytree(origin / lesson, course / "submitted" / student / lesson)
    for lesson, grade_id, wrong in classroom.ONE_WRONG:
        shutil.copytree(course / "source" / lesson, course / "submitted" / "onewrong" / lesson)
        path = classroom.notebook_path(course / "submitted" / "onewrong", lesson)
        nb = classroom.nbformat.read(path, as_version=4)
        cell, = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
        cell.source = wrong
        classroom.write(nb, path)
    for lesson in lessons():
        classroom.nbgrader(course, "autograde", lesson, "--create", "--force")
    return course, classroom.scores(course)


class CountingServer:
    """Accept connections on a listening socket and count them (a sandboxed notebook must make none)."""

    def __init__(self, sock):
        import threading
        self.sock, self.connections = sock, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


class NormalUser:
    """A user without privileges, for the sandbox's normal-user mode: name, ids and a home folder."""

    def __init__(self, name: str, uid: int, gid: int, home: Path):
        self.name, self.uid, self.gid, self.home = name, uid, gid, home

    def popen_args(self) -> dict:
        """Keyword arguments that make subprocess run a command as this user (nothing for yourself)."""
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> Path:
        """Give this user a folder tree (the course it grades)."""
        if self.uid != os.geteuid():
            for p in [path, *path.rglob("*")]:
                os.lchown(p, self.uid, self.gid)
        return path


@pytest.fixture(scope="session")
def normal_user(tmp_path_factory, learn):
    """As root: a throw-away user that may traverse to the environment, the model cache and the repository
    (o+x on their parent folders, restored afterwards) and is deleted after the session. As a normal user:
    yourself. The default model is trained (as the caller) first: the throw-away user cannot write the cache."""
    import pwd
    from course_utils.data import cache_dir
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        yield NormalUser(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir))
        return
    name = f"cgtest{os.getpid() % 100000}"
    base = tmp_path_factory.mktemp("normal-user")
    home = base / "home"
    import subprocess
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
                   check=True, capture_output=True)
    granted: dict[Path, int] = {}
    try:
        entry = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o700)
        for target in (sys.prefix, sys.base_prefix, cache_dir(), ROOT, base):
            for folder in [Path(target).resolve(), *Path(target).resolve().parents]:
                mode = folder.stat().st_mode & 0o7777
                if not mode & 0o001 and folder not in granted:
                    granted[folder] = mode
                    os.chmod(folder, mode | 0o001)
        yield NormalUser(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        for folder, mode in granted.items():
            os.chmod(folder, mode)
        subprocess.run(["userdel", name], capture_output=True)
