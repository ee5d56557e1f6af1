"""The whole course at a glance: grades of every lesson (`course export`), and `course status`.

Both read what `course release / collect / grade` left in the course folder and the gradebook,
so they can run at any time and change nothing but the export's CSV and its note.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
from pathlib import Path

from .gradebook import Course, CourseError, export_rows, fingerprint, read_result, require_gradebook

EXPORTS = "course-exports.json"     # in the course folder: which lessons were exported, when, where


def _lessons_in_gradebook(course: Course) -> list[str]:
    with course.gradebook() as gb:
        return sorted(a.name for a in gb.assignments)


def _people(course: Course) -> dict[str, dict]:
    with course.gradebook() as gb:
        return {s.id: {"first_name": s.first_name or "", "last_name": s.last_name or "", "email": s.email or ""}
                for s in gb.students}


def grade_rows(course: Course, lessons: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per student (roster and gradebook), one score column per lesson, total.

    A student with nothing handed in for a lesson scores 0 there; the per-lesson export
    (`export_rows`) has the status and the reasons.
    """
    require_gradebook(course, "course release")
    lessons = lessons or _lessons_in_gradebook(course)
    if not lessons:
        raise CourseError(f"{course.root}'s gradebook has no lesson yet: run `course release` first")
    people = _people(course)
    per_lesson = {lesson: {r["student_id"]: r for r in export_rows(course, lesson)} for lesson in lessons}
    everyone = sorted(set(people).union(*per_lesson.values()))
    columns = ["student_id", "first_name", "last_name", "email", *lessons, "total"]
    rows = []
    for sid in everyone:
        row = {"student_id": sid, **people.get(sid, {"first_name": "", "last_name": "", "email": ""})}
        for lesson in lessons:
            row[lesson] = per_lesson[lesson].get(sid, {}).get("score", 0.0)
        row["total"] = round(sum(row[lesson] for lesson in lessons), 4)
        rows.append(row)
    return columns, rows


def write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict]) -> Path:
    """Write rows as CSV (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def note_export(course: Course, lessons: list[str], path: Path) -> None:
    """Remember that these lessons were exported (for `course status`)."""
    notes = _exports(course)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for lesson in lessons:
        notes[lesson] = {"file": str(Path(path).resolve()), "at": now}
    (course.root / EXPORTS).write_text(json.dumps(notes, indent=1, sort_keys=True))


def _exports(course: Course) -> dict:
    try:
        return json.loads((course.root / EXPORTS).read_text())
    except (OSError, ValueError):
        return {}


@dataclasses.dataclass(frozen=True)
class LessonStatus:
    """Where one lesson stands: released, collected, graded (by status), exported."""
    lesson: str
    released: bool
    collected: int                   # submission folders
    graded: int
    flagged: int
    failed: int
    missing: int                     # known students with nothing handed in (or a folder without a notebook)
    to_grade: int                    # collected but not graded, or handed in again since
    exported: str                    # '' (never), 'yes' or 'stale' (graded again since)


def status(course_dir: str | os.PathLike = ".") -> list[LessonStatus]:
    """Every lesson of the course (its source folder) and where it stands."""
    course = Course.open(course_dir)
    db = Path(course.db_url.removeprefix("sqlite:///"))
    in_gradebook = set(_lessons_in_gradebook(course)) if db.is_file() else set()
    exports = _exports(course)
    students = set(_people(course)) if db.is_file() else set()
    out = []
    for lesson in course.assignments():
        released = lesson in in_gradebook and any((course.root / course.release / lesson).glob("*.ipynb"))
        counts = {"graded": 0, "flagged": 0, "failed": 0, "missing": 0}
        to_grade, last = 0, ""
        folders = {s: f for s, f in course.submissions(lesson).items() if f.is_dir()}
        for sid, folder in folders.items():
            result = read_result(course, lesson, sid)
            if not result or result.get("fingerprint") != fingerprint(folder):
                to_grade += 1
                continue
            counts[result["status"]] = counts.get(result["status"], 0) + 1
            last = max(last, result.get("graded_at", ""))
        counts["missing"] += len(students - set(folders))     # on the roster, nothing collected
        note = exports.get(lesson)
        exported = "" if not note else ("stale" if last > note["at"] else "yes")
        out.append(LessonStatus(lesson, released, len(folders), counts["graded"], counts["flagged"],
                                counts["failed"], counts["missing"], to_grade, exported))
    return out


def status_table(rows: list[LessonStatus]) -> str:
    """`course status` as text: one line per lesson."""
    head = f"{'lesson':<22}{'released':>9}{'collected':>10}{'graded':>8}{'flagged':>8}{'failed':>7}" \
           f"{'missing':>8}{'to grade':>9}  exported"
    lines = [head]
    for r in rows:
        lines.append(f"{r.lesson:<22}{'yes' if r.released else 'no':>9}{r.collected:>10}{r.graded:>8}{r.flagged:>8}"
                     f"{r.failed:>7}{r.missing:>8}{r.to_grade:>9}  {r.exported or 'no'}")
    return "\n".join(lines)


def gradebook_table(course_dir: str | os.PathLike = ".", lessons: list[str] | None = None) -> str:
    """Students × lessons, each cell 'score/max status', as the workflow prints it at the end."""
    course = Course.open(course_dir)
    lessons = lessons or _lessons_in_gradebook(course)
    cells = {lesson: {r["student_id"]: r for r in export_rows(course, lesson)} for lesson in lessons}
    students = sorted(set().union(*cells.values())) if cells else []
    width = max([len("student")] + [len(s) for s in students]) + 2
    lines = [("student".ljust(width) + "".join(f"{lesson:<22}" for lesson in lessons)).rstrip()]
    for sid in students:
        line = sid.ljust(width)
        for lesson in lessons:
            r = cells[lesson].get(sid)
            line += f"{r['score']:g}/{r['max_score']:g} {r['status']}".ljust(22) if r else "-".ljust(22)
        lines.append(line.rstrip())
    return "\n".join(lines)
