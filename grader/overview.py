"""The whole course at a glance: grades of every lesson (`course export`), and `course status`.

Both read what `course release / collect / grade` left in the course folder and the gradebook,
so they can run at any time and change nothing but the export's CSV and its note. Every status
shown comes from `gradebook.outcome`, as in the per-lesson export and the feedback pages.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
from pathlib import Path

from .final import final_grades
from .gradebook import NOT_GRADED, Course, CourseError, outcomes, require_gradebook
from .review import latest

EXPORTS = "course-exports.json"     # in the course folder: which lessons were exported, when, where


def _lessons_in_gradebook(course: Course) -> list[str]:
    with course.gradebook() as gb:
        return sorted(a.name for a in gb.assignments)


def _people(course: Course) -> dict[str, dict]:
    with course.gradebook() as gb:
        return {s.id: {"first_name": s.first_name or "", "last_name": s.last_name or "", "email": s.email or ""}
                for s in gb.students}


def grade_rows(course: Course, lessons: list[str] | None = None,
               include_unreviewed: bool = False) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per student (roster and gradebook), one score column per lesson, total.

    A lesson's cell is the grade that leaves (`final.final_grade`): the computed score, or a review
    decision that still applies, minus the late policy. A student with nothing handed in scores 0
    there. A student who handed in something not graded yet (or handed in again since grading), or
    whose flagged submission no one has reviewed, gets an empty cell, not 0 — the "no grade" of an
    LMS import (Canvas and Moodle read an empty cell as no grade; a 0 would be imported as one).
    With `include_unreviewed`, unreviewed flagged scores are filled in and an `unreviewed` column
    names their lessons. `total` is empty while any lesson of the row has no grade. The per-lesson
    export (`export_rows`) has the status and the reasons; `held_back` lists what was left out.
    """
    require_gradebook(course, "course release")
    lessons = lessons or _lessons_in_gradebook(course)
    if not lessons:
        raise CourseError(f"{course.root}'s gradebook has no lesson yet: run `course release` first")
    people = _people(course)
    per_lesson = {lesson: final_grades(course, lesson, outcomes(course, lesson), include_unreviewed)
                  for lesson in lessons}
    all_students = sorted(set(people).union(*per_lesson.values()))
    columns = ["student_id", "first_name", "last_name", "email", *lessons, "total"]
    marked = include_unreviewed and any(f.held for grades in per_lesson.values() for f in grades.values())
    columns += ["unreviewed"] if marked else []
    rows = []
    for sid in all_students:
        row = {"student_id": sid, **people.get(sid, {"first_name": "", "last_name": "", "email": ""})}
        for lesson in lessons:
            f = per_lesson[lesson].get(sid)
            row[lesson] = 0.0 if f is None else ("" if f.score is None else f.score)
        scores = [row[lesson] for lesson in lessons]
        row["total"] = "" if "" in scores else round(sum(scores), 4)
        if marked:
            row["unreviewed"] = " ".join(lesson for lesson in lessons if sid in per_lesson[lesson]
                                         and per_lesson[lesson][sid].held)
        rows.append(row)
    return columns, rows


def held_back(course: Course, lessons: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(lesson, student, why) of every grade an export leaves out or should say something about:
    flagged and not reviewed, not graded yet, or graded under tests or a grader that changed since."""
    out = []
    for lesson in lessons or _lessons_in_gradebook(course):
        decided = latest(course, lesson)
        for o in outcomes(course, lesson):
            d = decided.get(o.student_id)
            if o.status == NOT_GRADED:
                out.append((lesson, o.student_id, "not graded: " + "; ".join(o.reasons)))
            elif o.status == "flagged" and not (d and d.applies_to(o)):
                out.append((lesson, o.student_id, f"flagged, not reviewed: run `course review {lesson}`"))
            if o.stale:
                out.append((lesson, o.student_id, f"stale: {o.stale} (run `course grade {lesson}`)"))
    return out


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
    """Where one lesson stands: released, collected, each student's `outcome` counted by status, exported."""
    lesson: str
    released: bool
    collected: int                   # submission folders
    graded: int
    flagged: int
    failed: int
    missing: int                     # nothing handed in (no folder, an empty one, or no notebook in it)
    pending: tuple[tuple[str, str], ...]   # (student, reason) of each one handed in but not graded
    exported: str                    # '' (never), 'yes' or 'stale' (graded again since)
    to_review: tuple[str, ...] = ()  # flagged, and no review decision applies: held back from exports
    stale: tuple[tuple[str, str], ...] = ()   # (student, why) graded under tests or a grader that changed

    @property
    def not_graded(self) -> int:
        """Handed in but not graded: the run did not reach them, or they handed in again since."""
        return len(self.pending)


def status(course_dir: str | os.PathLike = ".") -> list[LessonStatus]:
    """Every lesson of the course (its source folder) and where it stands."""
    course = Course.open(course_dir)
    with course.one_gradebook():
        return _status(course)


def _status(course: Course) -> list[LessonStatus]:
    db = Path(course.db_url.removeprefix("sqlite:///"))
    in_gradebook = set(_lessons_in_gradebook(course)) if db.is_file() else set()
    exports = _exports(course)
    out = []
    for lesson in course.assignments():
        released = lesson in in_gradebook and any((course.root / course.release / lesson).glob("*.ipynb"))
        counts = {"graded": 0, "flagged": 0, "failed": 0, "missing": 0}
        pending, last, waiting, stale = [], "", [], []
        folders = [f for f in course.submissions(lesson).values() if f.is_dir()]
        decided = latest(course, lesson) if lesson in in_gradebook else {}
        for o in outcomes(course, lesson):
            if o.status == NOT_GRADED:
                pending.append((o.student_id, "; ".join(o.reasons)))
            else:
                counts[o.status] += 1
            if o.status == "flagged" and not (o.student_id in decided and decided[o.student_id].applies_to(o)):
                waiting.append(o.student_id)
            if o.stale:
                stale.append((o.student_id, o.stale))
            last = max(last, (o.result or {}).get("graded_at", ""))
        note = exports.get(lesson)
        exported = "" if not note else ("stale" if last > note["at"] else "yes")
        out.append(LessonStatus(lesson, released, len(folders), counts["graded"], counts["flagged"],
                                counts["failed"], counts["missing"], tuple(pending), exported, tuple(waiting),
                                tuple(stale)))
    return out


def status_table(rows: list[LessonStatus]) -> str:
    """`course status` as text: one line per lesson, then every student not graded, stale or to review."""
    head = f"{'lesson':<22}{'released':>9}{'collected':>10}{'graded':>8}{'flagged':>8}{'failed':>7}" \
           f"{'missing':>8}{'not graded':>11}{'to review':>10}{'stale':>6}  exported"
    lines = [head]
    for r in rows:
        lines.append(f"{r.lesson:<22}{'yes' if r.released else 'no':>9}{r.collected:>10}{r.graded:>8}{r.flagged:>8}"
                     f"{r.failed:>7}{r.missing:>8}{r.not_graded:>11}{len(r.to_review):>10}{len(r.stale):>6}"
                     f"  {r.exported or 'no'}")
    for title, found in (("not graded (handed in, no current grade):", [(r.lesson, s, w) for r in rows for s, w in r.pending]),
                         ("stale (`course grade LESSON` regrades them):", [(r.lesson, s, w) for r in rows for s, w in r.stale]),
                         ("flagged, waiting for `course review LESSON` (held back from exports):",
                          [(r.lesson, s, "") for r in rows for s in r.to_review])):
        if found:
            width = max(len(sid) for _, sid, _ in found)
            lines += ["", title] + [f"  {lesson:<22}{sid:<{width}}  {why}".rstrip() for lesson, sid, why in found]
    return "\n".join(lines)


def gradebook_table(course_dir: str | os.PathLike = ".", lessons: list[str] | None = None) -> str:
    """Students × lessons, each cell 'score/max status' (`outcome`'s; '–/max not graded' when there is
    no grade yet), as the workflow prints it at the end, then the reason of every 'not graded' cell."""
    course = Course.open(course_dir)
    lessons = lessons or _lessons_in_gradebook(course)
    cells = {lesson: {o.student_id: o for o in outcomes(course, lesson)} for lesson in lessons}
    students = sorted(set().union(*cells.values())) if cells else []
    width = max([len("student")] + [len(s) for s in students]) + 2
    lines = [("student".ljust(width) + "".join(f"{lesson:<22}" for lesson in lessons)).rstrip()]
    pending = []
    for sid in students:
        line = sid.ljust(width)
        for lesson in lessons:
            o = cells[lesson].get(sid)
            line += (f"{_number(o.score)}/{_number(o.max_score)} {o.status}" if o else "-").ljust(22)
            if o and o.status == NOT_GRADED:
                pending.append(f"  {sid} {lesson}: {'; '.join(o.reasons)}")
        lines.append(line.rstrip())
    if pending:
        lines += ["", "not graded:", *pending]
    return "\n".join(lines)


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:g}"
