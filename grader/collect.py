"""`course collect`: put what students actually hand in where nbgrader expects it.

A source is a folder, a zip or a notebook; inside it, one file per student, one folder per student,
an LMS bulk download (Canvas `doejane_12345_67890_05_gradcam-1.ipynb`, Moodle
`Jane Doe_12345_assignsubmission_file_/05_gradcam.ipynb`) or zips inside zips. Each notebook is
matched to a student (the roster, or the name itself), the latest file of a student wins, and it is
copied to `submitted/<id>/<lesson>/<notebook>.ipynb` with nbgrader's `timestamp.txt`.

Archives are read in memory, entry by entry, with a size cap per file and in total (zip bombs), and
an entry whose path leaves its folder (`../x.ipynb`, `/etc/x`) is refused (zip-slip): nothing is
written outside the course's `submitted/` and `replaced/` folders. A different submission already
in place is never overwritten silently: the newer one wins and the older one is moved to
`replaced/<id>/<lesson>/<its time>/`; an older incoming file is reported and left out unless
`replace=True`.
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from .assemble import normalise_name
from .gradebook import Course, CourseError, check_lesson
from .late import notebook_hash, record_path
from .roster import Roster, check_id, id_from_name

MAX_FILE_BYTES = 64 << 20          # one notebook (or nested zip) read from an archive
MAX_TOTAL_BYTES = 1 << 30          # everything read from archives in one collect
MAX_DEPTH = 3                      # zips inside zips
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"   # nbgrader's (ExchangeSubmit.timestamp_format), in UTC
REPLACED = "replaced"
_CANVAS = re.compile(r"^(?P<name>[A-Za-z0-9]+?)(?:_LATE)?_(?P<uid>\d+)_(?P<sub>\d+)_(?P<rest>.+)$")
_MOODLE = re.compile(r"^(?P<name>.+?)_(?P<uid>\d+)_assignsubmission_[a-z]+_(?P<rest>.*)$")
_CANVAS_LATE = re.compile(r"^[A-Za-z0-9]+?_LATE_\d+_\d+_")       # Canvas marks a late file in its name
_CANVAS_COPY = re.compile(r"-(\d+)\.ipynb$", re.I)
_SYSTEM = ("__MACOSX", ".DS_Store", ".ipynb_checkpoints", "Thumbs.db", "desktop.ini")


@dataclasses.dataclass(frozen=True)
class Placed:
    """A notebook copied into submitted/ (or found there already, unchanged)."""
    student_id: str
    origin: str                  # where it came from, e.g. 'bulk.zip!doejane_1_2_05_gradcam.ipynb'
    path: Path                   # where it is now
    submitted_at: datetime.datetime
    note: str = ""               # e.g. what it replaced


@dataclasses.dataclass(frozen=True)
class Unplaced:
    """A file that was not placed, and why in words."""
    origin: str
    reason: str


@dataclasses.dataclass
class Collected:
    """What one `collect()` did: who was placed, who is missing, what was left out and why."""
    lesson: str
    placed: list[Placed] = dataclasses.field(default_factory=list)
    unchanged: list[Placed] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)     # roster ids with no submission
    unplaced: list[Unplaced] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """The report the command prints: placed, unchanged, missing, unplaced with reasons."""
        lines = [f"{self.lesson}: {len(self.placed)} placed, {len(self.unchanged)} unchanged, "
                 f"{len(self.missing)} missing, {len(self.unplaced)} file(s) not placed"]
        for p in self.placed:
            lines.append(f"  placed     {p.student_id:<16} {p.origin}" + (f"  ({p.note})" if p.note else ""))
        for p in self.unchanged:
            lines.append(f"  unchanged  {p.student_id:<16} {p.origin}")
        for sid in self.missing:
            lines.append(f"  missing    {sid:<16} nothing handed in")
        for u in self.unplaced:
            lines.append(f"  not placed {u.origin}: {u.reason}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Entry:
    origin: str
    parts: tuple[str, ...]             # folders, then the file name, relative to its source
    when: datetime.datetime
    read: Callable[[], bytes]
    wrapper: int = 0                   # leading folders shared by every entry (names of last resort)
    source: str = "the file's modification time"     # where `when` comes from (recorded for late work)


class _Budget:
    """Bytes read from archives so far; refuses to go past MAX_TOTAL_BYTES."""

    def __init__(self) -> None:
        self.used = 0

    def read(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        if info.file_size > MAX_FILE_BYTES:
            raise _Refused(f"it unpacks to {info.file_size >> 20} MB, more than the {MAX_FILE_BYTES >> 20} MB cap")
        with zf.open(info) as f:
            data = f.read(MAX_FILE_BYTES + 1)       # the header's size may lie: never trust it
        if len(data) > MAX_FILE_BYTES:
            raise _Refused(f"it unpacks to more than the {MAX_FILE_BYTES >> 20} MB cap")
        self.used += len(data)
        if self.used > MAX_TOTAL_BYTES:
            raise _Refused(f"the archives unpack to more than {MAX_TOTAL_BYTES >> 30} GB in total")
        return data


class _Refused(Exception):
    """An archive entry that is not read (too big); the message says why."""


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def _unsafe(name: str) -> bool:
    """Would this archive path leave the folder it is unpacked in?"""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


def _system(parts: tuple[str, ...]) -> bool:
    return any(p in _SYSTEM or p.startswith("._") for p in parts)


def _wrapped(entries: list[_Entry]) -> list[_Entry]:
    """Mark the leading folders that every entry shares (a zip's top folder names no student)."""
    if len(entries) < 2:
        return entries
    depth = 0
    while all(len(e.parts) > depth + 1 and e.parts[depth] == entries[0].parts[depth] for e in entries):
        depth += 1
    return [dataclasses.replace(e, wrapper=depth) for e in entries]


def _scan_zip(data: bytes | Path, origin: str, prefix: tuple[str, ...], depth: int, budget: _Budget,
              out: list[Unplaced]) -> Iterator[_Entry]:
    """The entries of a zip (and of the zips inside it), read lazily, unsafe ones refused."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError) as e:
        out.append(Unplaced(origin, f"not a readable zip ({e})"))
        return
    entries = []
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        where = f"{origin}!{info.filename}"
        if info.is_dir():
            continue
        if _unsafe(info.filename):
            out.append(Unplaced(where, "its path leaves the folder it would be unpacked in (zip-slip): not extracted"))
            continue
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        when = datetime.datetime(*info.date_time, tzinfo=datetime.timezone.utc)
        if parts[-1].lower().endswith(".zip") and not _system(parts):
            if depth >= MAX_DEPTH:
                out.append(Unplaced(where, f"zips nested more than {MAX_DEPTH} deep are not opened"))
                continue
            try:
                inner = budget.read(zf, info)
            except _Refused as e:
                out.append(Unplaced(where, f"not opened: {e}"))
                continue
            stem = parts[-1][:-4]
            entries.extend(_scan_zip(inner, where, prefix + parts[:-1] + (stem,), depth + 1, budget, out))
            continue
        entries.append(_Entry(where, prefix + parts, when, lambda zf=zf, info=info: budget.read(zf, info),
                              source="the time stored in the zip (the LMS download's)"))
    yield from _wrapped(entries) if not prefix else entries


def _scan_folder(folder: Path, budget: _Budget, out: list[Unplaced]) -> Iterator[_Entry]:
    """The files under a folder (symbolic links are not followed), zips opened."""
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        shown = "/".join((folder.name, *rel))          # what the report calls it
        if path.is_symlink():
            out.append(Unplaced(shown, "a symbolic link: not followed"))
        elif path.is_file() and path.suffix.lower() == ".zip" and not _system(rel):
            entries.extend(_scan_zip(path, shown, rel[:-1] + (path.stem,), 1, budget, out))
        elif path.is_file():
            entries.append(_Entry(shown, rel, _utc(path.stat().st_mtime), path.read_bytes))
    return iter(_wrapped(entries))


def _scan(source: Path, budget: _Budget, out: list[Unplaced]) -> Iterator[_Entry]:
    if source.is_dir():
        return _scan_folder(source, budget, out)
    if source.is_file() and zipfile.is_zipfile(source):
        return _scan_zip(source, source.name, (), 0, budget, out)
    if source.is_file() and source.suffix.lower() == ".ipynb":
        return iter([_Entry(source.name, (source.name,), _utc(source.stat().st_mtime), source.read_bytes)])
    raise ValueError(f"{source} is not a folder, a zip or a notebook: pass what the students handed in")


@dataclasses.dataclass(frozen=True)
class _Who:
    names: tuple[str, ...]     # what may name the student, most telling first
    notebook: str              # the file name once the LMS's prefix is removed
    copy: int                  # Canvas's -N suffix (a later upload of the same name)


def _whose(entry: _Entry, lessons: set[str]) -> _Who:
    """Read the student's possible names and the notebook's own name from an entry's path."""
    *folders, filename = entry.parts
    lms, plain, notebook = [], [], filename
    for pattern in (_CANVAS, _MOODLE):
        if m := pattern.match(filename):
            lms.append(m["name"])
            notebook = m["rest"]
            break
    for depth in reversed(range(len(folders))):
        m = _CANVAS.match(folders[depth]) or _MOODLE.match(folders[depth])
        if m:
            lms.append(m["name"])
        elif normalise_name(folders[depth]) not in lessons:
            plain.append((depth < entry.wrapper, folders[depth]))
    flat = normalise_name(notebook)
    for lesson in sorted(lessons, key=len, reverse=True):
        flat = flat.replace(lesson, "")
    flat = flat.strip("_-. ")
    suffix = _CANVAS_COPY.search(filename)
    copy = int(suffix[1]) if suffix and lms else 0
    names = lms + [f for wrapper, f in plain if not wrapper] + ([flat] if flat else [])
    return _Who(tuple(names + [f for wrapper, f in plain if wrapper]), notebook, copy)


def _identify(who: _Who, roster: Roster | None) -> tuple[str | None, str]:
    """(student id, '') or (None, why not)."""
    if not who.names:
        return None, "the file's name and folders name no student"
    if roster is None:
        sid = id_from_name(who.names[0])
        return (sid, "") if sid else (None, "the file's name and folders name no student")
    for name in who.names:
        if student := roster.identify(name):
            return student.id, ""
    return None, f"'{who.names[0]}' is not in the roster (or matches more than one student)"


def _notebook_for(who: _Who, lesson: str, notebooks: list[str], lessons: set[str]) -> tuple[str | None, str]:
    """Which notebook of the lesson this file is, or (None, why not)."""
    name = normalise_name(who.notebook)
    other = [x for x in lessons if x != lesson and x in name and lesson not in name]
    if other:
        return None, f"it is lesson {other[0]}'s notebook, not {lesson}'s"
    if len(notebooks) == 1:
        return notebooks[0], ""
    exact = [n for n in notebooks if n.lower() in name]
    return (exact[0], "") if len(exact) == 1 else (None, f"it matches none of {', '.join(notebooks)}")


def lesson_notebooks(course: Course, lesson: str) -> list[str]:
    """The notebook names of a lesson, from the course's source (or release) folder."""
    for step in (course.source, course.release):
        folder = course.root / step / lesson
        if folder.is_dir() and (names := sorted(p.stem for p in folder.glob("*.ipynb"))):
            return names
    raise CourseError(f"no lesson '{lesson}' in {course.root / course.source}: name one of "
                      f"{', '.join(course.assignments()) or '(none)'}")


def collect(lesson: str, sources: list[str | os.PathLike], course_dir: str | os.PathLike = ".",
            roster: Roster | None = None, replace: bool = False) -> Collected:
    """Place every student's latest notebook for `lesson` from `sources`; see the module docstring."""
    if not sources:
        raise ValueError("name at least one SOURCE: a folder or zip of what the students handed in")
    check_lesson(lesson)
    course = Course.open(course_dir)
    notebooks = lesson_notebooks(course, lesson)
    lessons = {x.lower() for x in course.assignments()}
    report, budget = Collected(lesson), _Budget()
    chosen: dict[tuple[str, str], tuple[tuple, _Entry]] = {}
    for source in map(Path, sources):
        for entry in _scan(source, budget, report.unplaced):
            _consider(entry, lesson, notebooks, lessons, roster, chosen, report)
    for (sid, notebook), (_, entry) in sorted(chosen.items()):
        _place(course, lesson, sid, notebook, entry, replace, report)
    report.missing = [sid for sid in (roster.ids() if roster else [])
                      if not course.folder(course.submitted, sid, lesson).is_dir()]
    return report


def _consider(entry: _Entry, lesson: str, notebooks: list[str], lessons: set[str], roster: Roster | None,
              chosen: dict, report: Collected) -> None:
    """Match one entry to a student and keep it if it is that student's latest so far."""
    name = entry.parts[-1]
    if _system(entry.parts):
        report.unplaced.append(Unplaced(entry.origin, "operating-system metadata, ignored"))
        return
    if not name.lower().endswith(".ipynb"):
        report.unplaced.append(Unplaced(entry.origin, "not a notebook (.ipynb)"))
        return
    who = _whose(entry, lessons)
    sid, why = _identify(who, roster)
    notebook, why_not = _notebook_for(who, lesson, notebooks, lessons) if sid else (None, why)
    if not sid or not notebook:
        report.unplaced.append(Unplaced(entry.origin, why_not))
        return
    key, rank = (sid, notebook), (entry.when, who.copy, entry.origin)
    if key in chosen:
        older, newer = sorted([chosen[key], (rank, entry)], key=lambda pair: pair[0])
        chosen[key] = newer
        report.unplaced.append(Unplaced(older[1].origin, f"an older file of {sid}: '{newer[1].origin}' is newer"))
    else:
        chosen[key] = (rank, entry)


def _record_hand_in(course: Course, sid: str, lesson: str, entry: _Entry, data: bytes) -> None:
    """The hand-in time, where it came from and the notebook's hash, outside submitted/ (late work reads it)."""
    path = _inside(course, record_path(course.root, sid, lesson))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"time": entry.when.isoformat(), "source": entry.source, "file": entry.origin,
                               "sha256": notebook_hash(data),
                               "lms_late_mark": bool(_CANVAS_LATE.search(entry.parts[-1]))}, indent=1))
    os.replace(tmp, path)


def _existing_time(folder: Path, path: Path) -> datetime.datetime:
    from nbgrader.utils import parse_utc
    try:
        return parse_utc((folder / "timestamp.txt").read_text().strip()).replace(tzinfo=datetime.timezone.utc)
    except (OSError, ValueError, OverflowError):
        return _utc(path.stat().st_mtime)


def _inside(course: Course, path: Path) -> Path:
    """Refuse a destination that resolves outside the course folder (a planted symbolic link)."""
    if not path.resolve().is_relative_to(course.root.resolve()):
        raise CourseError(f"{path} leads outside the course folder {course.root}: remove that link and collect again")
    return path


def _place(course: Course, lesson: str, sid: str, notebook: str, entry: _Entry, replace: bool,
           report: Collected) -> None:
    """Copy one student's chosen notebook into submitted/, never overwriting a different one silently."""
    check_id(sid)
    try:
        data = entry.read()
    except _Refused as e:
        report.unplaced.append(Unplaced(entry.origin, f"not read: {e}"))
        return
    folder = _inside(course, course.folder(course.submitted, sid, lesson))
    target = folder / f"{notebook}.ipynb"
    note = ""
    if folder.exists():
        current = sorted(folder.glob("*.ipynb"))
        if current == [target] and target.read_bytes() == data:
            report.unchanged.append(Placed(sid, entry.origin, target, entry.when))
            return
        then = _existing_time(folder, current[0]) if current else entry.when
        if then >= entry.when and current and not replace:
            report.unplaced.append(Unplaced(entry.origin, f"{folder.relative_to(course.root)} already holds a "
                                            f"submission from {then:%Y-%m-%d %H:%M} UTC, not older than this file: "
                                            "kept (pass --replace to use this file instead)"))
            return
        keep = _inside(course, course.root / REPLACED / sid / lesson / then.strftime("%Y%m%dT%H%M%S%fZ"))
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(keep, ignore_errors=True)
        os.replace(folder, keep)
        note = f"the earlier submission was moved to {keep.relative_to(course.root)}"
    tmp = folder.with_name(f".{lesson}.collecting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / target.name).write_bytes(data)
    (tmp / "timestamp.txt").write_text(entry.when.strftime(TIMESTAMP_FORMAT))
    os.replace(tmp, folder)
    _record_hand_in(course, sid, lesson, entry, data)
    report.placed.append(Placed(sid, entry.origin, target, entry.when, note))
