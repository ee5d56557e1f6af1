"""The class list: nbgrader's roster CSV (`id,first_name,last_name,email`) and who a file name means.

Students hand in files named by the LMS (`doejane_12345_…`, `Jane Doe_12345_…`), by themselves, or
by their id; `Roster.identify` turns any of those names into a roster id.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gradebook import Course

ROSTER_COLUMNS = ("id", "first_name", "last_name", "email")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")


@dataclasses.dataclass(frozen=True)
class Student:
    """One roster row."""
    id: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""

    def keys(self) -> set[str]:
        """Every spelling a file name may use for this student, squashed (see `squash`)."""
        first, last = squash(self.first_name), squash(self.last_name)
        keys = {squash(self.id), squash(self.email.split("@")[0]) if self.email else ""}
        if first and last:
            keys |= {last + first, first + last}      # Canvas logins are lastnamefirstname
        return keys - {""}


def _ascii(name: str) -> str:
    """'Björn' -> 'bjorn': accents dropped (LMS logins drop them), lower case."""
    return unicodedata.normalize("NFKD", name.casefold()).encode("ascii", "ignore").decode()


def squash(name: str) -> str:
    """'Jane Doe', 'jane_doe', 'Jane-Doe' -> 'janedoe', 'Björn' -> 'bjorn': how names are compared."""
    return re.sub(r"[^0-9a-z]", "", _ascii(name))


def check_id(student_id: str) -> str:
    """Return the id if it can name a folder in submitted/, else raise ValueError naming the fix."""
    if not _SAFE_ID.match(student_id) or ".." in student_id:
        raise ValueError(f"student id {student_id!r} cannot be a folder name: use letters, digits and _ . @ + -")
    return student_id


def id_from_name(name: str) -> str:
    """A student id made from a name when there is no roster: 'Jane Doe' -> 'jane_doe'."""
    return re.sub(r"[^0-9a-z]+", "_", _ascii(name)).strip("_")[:100]


@dataclasses.dataclass(frozen=True)
class Roster:
    """The students of a course, looked up by any name a file may carry."""
    students: tuple[Student, ...]

    def ids(self) -> list[str]:
        """The students' ids, in roster order."""
        return [s.id for s in self.students]

    def identify(self, name: str) -> Student | None:
        """The one student this name means, or None (unknown, or more than one would fit)."""
        key = squash(name)
        found = {s.id: s for s in self.students if key and key in s.keys()}
        return next(iter(found.values())) if len(found) == 1 else None


def read_roster(path: str | os.PathLike) -> Roster:
    """Read nbgrader's student CSV (id, first_name, last_name, email; only id is required)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"roster {path} does not exist: pass --roster with a CSV of id,first_name,last_name,email")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "id" not in rows[0]:
        raise ValueError(f"roster {path} needs a header line with an 'id' column "
                         f"(nbgrader's format: {','.join(ROSTER_COLUMNS)})")
    students, seen = [], set()
    for line, row in enumerate(rows, start=2):
        sid = (row.get("id") or "").strip()
        try:
            check_id(sid)
        except ValueError as e:
            raise ValueError(f"roster {path}, line {line}: {e}") from None
        if sid in seen:
            raise ValueError(f"roster {path}, line {line}: student id {sid!r} appears twice")
        seen.add(sid)
        students.append(Student(sid, *((row.get(c) or "").strip() for c in ROSTER_COLUMNS[1:])))
    return Roster(tuple(students))


def import_roster(course: "Course", roster: Roster) -> None:
    """Add (or update) every roster student in the course's gradebook, as `nbgrader db student import` does."""
    with course.gradebook() as gb:
        for s in roster.students:
            gb.update_or_create_student(s.id, first_name=s.first_name or None, last_name=s.last_name or None,
                                        email=s.email or None)
