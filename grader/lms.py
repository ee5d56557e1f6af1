"""Grade files an LMS takes as they are: a Canvas gradebook upload, a Moodle grade import, Moodle feedback zips.

`course export` writes our own CSV; an LMS wants its own layout. Three writers, each on the rows of
`overview.grade_rows` (one per student, a score column per lesson, '' for "no grade yet"):

- `canvas_upload` fills the lesson columns of the gradebook CSV Canvas exported (Grades > Export)
  and leaves every other byte of it as it was, so the file goes back through Grades > Import;
- `moodle_grades` writes the CSV Moodle's "Import grades > CSV file" maps: one identifier column
  (email by default) and one plain-number column per lesson;
- `moodle_feedback_zip` packs a lesson's feedback pages in the folders Moodle's assignment
  "Upload multiple feedback files in a zip" reads (`<full name>_<participant id>_assignfeedback_file_/`).

Each returns an `LmsReport`: who was written, who is in the LMS file but not ours and the reverse
(the file is written for everyone else), and notes. Bad input raises ValueError naming the fix and
writes nothing; files are written atomically. The layouts, and where they are documented, are in
tests/data/lms/SOURCES.md.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from .roster import squash

if TYPE_CHECKING:
    from .gradebook import Course

PERSON_COLUMNS = ("student_id", "first_name", "last_name", "email")
MOODLE_ID_FIELDS = {"email": "Email address", "idnumber": "ID number", "username": "Username"}   # column headers
MOODLE_MAP_TO = {"email": "useremail", "idnumber": "useridnumber", "username": "username"}     # the import's "Map to"
CANVAS_ASSIGNMENT = re.compile(r"^(?P<name>.*\S)\s+\((?P<id>\d+)\)$")       # "05_gradcam (123456)"
CANVAS_TOTALS = re.compile(r"(Current|Final|Override) (Score|Points|Grade|Status)")
CANVAS_BANNER = re.compile(r"^\s*(Muted|Manual Posting.*)?\s*$", re.I)       # the posting-policy row, blank rows
MOODLE_PARTICIPANT = re.compile(r"(\d+)\s*$")                                 # "Participant 12345"
MOODLE_FEEDBACK_PLUGIN = "assignfeedback_file"


@dataclasses.dataclass(frozen=True)
class LmsReport:
    """What an LMS export wrote, and who could not be matched (the file holds everyone else)."""
    kind: str                                  # 'canvas', 'moodle grades' or 'moodle feedback'
    path: Path
    lessons: tuple[str, ...]                   # the lessons written
    written: tuple[str, ...]                   # our student ids in the file
    not_in_roster: tuple[str, ...] = ()        # LMS rows that match none of our students
    not_in_lms: tuple[str, ...] = ()           # our students the file could not hold (no LMS row, no identifier)
    notes: tuple[str, ...] = ()                # e.g. matched by full name, lesson absent, excused kept

    def lines(self) -> list[str]:
        """The report as the command line prints it."""
        out = [f"wrote {self.path} ({self.kind}): {len(self.written)} students, lessons {', '.join(self.lessons)}"]
        out += [f"  not in our roster: {who}" for who in self.not_in_roster]
        out += [f"  not in the LMS file: {who}" for who in self.not_in_lms]
        out += [f"  note: {note}" for note in self.notes]
        return out


def lessons_of(columns: list[str]) -> list[str]:
    """The lesson columns of `grade_rows`' columns (between the person columns and `total`; any after it ignored)."""
    if tuple(columns[:4]) != PERSON_COLUMNS or "total" not in columns or columns.index("total") < 5:
        raise ValueError(f"expected grade_rows' columns ({', '.join(PERSON_COLUMNS)}, <lessons>, total), "
                         f"got {columns}: pass what overview.grade_rows returns")
    return list(columns[4:columns.index("total")])


def plain_number(score: float) -> str:
    """A score as an LMS import reads it: '6', '4.5', '0.1234' (no exponent, no thousands separator)."""
    text = f"{float(score):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _write_atomically(path: Path, data: bytes) -> Path:
    """Write bytes to a temp file beside `path`, then move it into place (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _describe(row: dict) -> str:
    name = " ".join(filter(None, (row.get("first_name"), row.get("last_name"))))
    return f"{row['student_id']}" + (f" ({name})" if name else "")


# ---------------------------------------------------------------- CSV records kept byte for byte

@dataclasses.dataclass
class _Record:
    """One CSV record as its raw field texts and the line ending after it: joined, it is the input again."""
    fields: list[str]
    ending: str
    line: int                                   # 1-based line where the record starts

    def value(self, index: int) -> str:
        """The field's value: quotes removed and doubled quotes undone."""
        raw = self.fields[index] if index < len(self.fields) else ""
        if raw.startswith('"'):
            return raw[1:-1].replace('""', '"') if raw.endswith('"') and len(raw) > 1 else raw[1:]
        return raw

    def values(self) -> list[str]:
        return [self.value(i) for i in range(len(self.fields))]

    def text(self, delimiter: str) -> str:
        return delimiter.join(self.fields) + self.ending


def _records(text: str, delimiter: str) -> list[_Record]:
    """Split CSV text into records without normalising anything (quotes, spacing, line endings kept)."""
    records, fields, start, quoted, line, first_line, i = [], [], 0, False, 1, 1, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == '"' and text.startswith('""', i):
                i += 1
            elif c == '"':
                quoted = False
            elif c == "\n":
                line += 1
        elif c == '"' and i == start:
            quoted = True
        elif c == delimiter:
            fields.append(text[start:i])
            start = i + 1
        elif c in "\r\n":
            ending = "\r\n" if text.startswith("\r\n", i) else c
            records.append(_Record([*fields, text[start:i]], ending, first_line))
            i += len(ending)
            line += 1
            fields, start, first_line = [], i, line
            continue
        i += 1
    if start < len(text) or fields:
        records.append(_Record([*fields, text[start:]], "", first_line))
    return records


def _delimiter(first_line: str) -> str:
    """The delimiter of a CSV export: the one that splits its header line into the most cells."""
    return max((",", ";", "\t"), key=lambda d: len(_records(first_line, d)[0].fields) if first_line else 0)


# ---------------------------------------------------------------- Canvas

def _canvas_header(header: list[str], source: Path) -> tuple[dict[str, int], tuple[int, ...]]:
    """Check the first row is a Canvas gradebook header; return its SIS id columns and name columns."""
    cells = [h.strip() for h in header]
    expected = ("expected a Canvas gradebook export (Grades > Export), whose header starts with "
                "Student, ID, SIS User ID, SIS Login ID, Section")
    names: tuple[int, ...] | None = None
    if len(cells) > 3 and "Student" in cells[0] and "ID" in cells[1]:
        names = (0,)
    elif len(cells) > 4 and cells[0] == "LastName" and cells[1] == "FirstName" and "ID" in cells[2]:
        names = (1, 0)
    if names is None or "Section" not in cells:
        raise ValueError(f"{source} is not a Canvas gradebook export: {expected}; found {cells[:6]}")
    ids = {name: cells.index(name) for name in ("SIS Login ID", "SIS User ID") if name in cells}
    if not ids:
        raise ValueError(f"{source} has no SIS Login ID or SIS User ID column to match students by: {expected} "
                         f"(export the entire gradebook as a teacher who may see SIS ids); found {cells[:6]}")
    return ids, names


def _canvas_lessons(header: list[str], lessons: list[str], source: Path) -> tuple[dict[str, int], tuple[str, ...]]:
    """Map each lesson to the assignment column named after it ('05_gradcam (123456)')."""
    section = [h.strip() for h in header].index("Section")
    assignments = {i: m["name"] for i, h in enumerate(header) if i > section
                   and (m := CANVAS_ASSIGNMENT.match(h.strip())) and not CANVAS_TOTALS.search(h)}
    found = {}
    for lesson in lessons:
        hits = [i for i, name in assignments.items() if squash(name) == squash(lesson)]
        if len(hits) > 1:
            raise ValueError(f"{source} has {len(hits)} assignment columns for lesson {lesson}: "
                             f"{[header[i] for i in hits]}; rename all but one in Canvas and export again")
        if hits:
            found[lesson] = hits[0]
    if not found:
        raise ValueError(f"{source} has no assignment column for any lesson: expected columns named like "
                         f"'{lessons[0]} (123456)' for {', '.join(lessons)}; found assignment columns "
                         f"{[header[i] for i in assignments] or 'none'}. Name the Canvas assignments after "
                         f"the lessons and export the gradebook again")
    return found, tuple(header[i] for i in assignments)


def _is_canvas_banner(record: _Record) -> bool:
    """Canvas's rows that are not students: Points Possible, the Muted/Manual Posting row, blank rows."""
    values = record.values()
    return "Points Possible" in values[0] or all(CANVAS_BANNER.match(v) for v in values)


def _student_keys(rows: list[dict]) -> dict[str, set[str]]:
    """key -> our student ids it may mean: the id, the email, the email's local part (case ignored)."""
    keys: dict[str, set[str]] = {}
    for row in rows:
        email = (row.get("email") or "").strip().casefold()
        for key in {row["student_id"].casefold(), email, email.split("@")[0]} - {""}:
            keys.setdefault(key, set()).add(row["student_id"])
    return keys


def _score_equal(cell: str, score: float) -> bool:
    try:
        return abs(float(cell.strip().replace(",", ".")) - float(score)) < 5e-5
    except ValueError:
        return False


def canvas_upload(columns: list[str], rows: list[dict], gradebook: str | os.PathLike,
                  out: str | os.PathLike) -> LmsReport:
    """Fill the lesson columns of a Canvas gradebook export with our grades and write the file to import.

    Students are matched by SIS Login ID or SIS User ID against our id, email or email's local part;
    lessons by the assignment name before Canvas's ' (id)'. Only the changed cells are rewritten:
    every other byte (header rows, other columns, quoting, line endings, BOM) stays as downloaded.
    A lesson with no grade yet, or an excused ('EX') cell, is left as it was.
    """
    lessons, source, out = lessons_of(columns), Path(gradebook), Path(out)
    if not source.is_file():
        raise ValueError(f"{source} does not exist: download it from Canvas (Grades > Export) and pass its path")
    if out.resolve() == source.resolve():
        raise ValueError(f"--to {out} is the Canvas download itself: write the upload to another file")
    raw = source.read_bytes()
    bom = "\ufeff" if raw.startswith(b"\xef\xbb\xbf") else ""
    text = raw.decode("utf-8", errors="surrogateescape")[len(bom):]
    delimiter = _delimiter(text.split("\n", 1)[0])
    records = _records(text, delimiter)
    if not records:
        raise ValueError(f"{source} is empty: download the gradebook from Canvas (Grades > Export)")
    ids, names = _canvas_header(records[0].values(), source)
    lesson_columns, _ = _canvas_lessons(records[0].values(), lessons, source)
    grades = {row["student_id"]: row for row in rows}
    keys = _student_keys(rows)
    matched: dict[str, int] = {}
    not_in_roster, notes = [], []
    for record in records[1:]:
        if _is_canvas_banner(record):
            continue
        who = ", ".join(record.value(i) for i in names) or "(no name)"
        ids_here = {record.value(i).strip().casefold() for i in ids.values()} - {""}
        students = set().union(*(keys.get(k, set()) for k in ids_here)) if ids_here else set()
        if len(students) != 1:
            why = "no SIS id" if not ids_here else ("matches several students" if students else "unknown SIS id")
            shown = [f"{n} {record.value(i).strip()}" for n, i in ids.items() if record.value(i).strip()]
            not_in_roster.append(f"line {record.line}: {who} ({'; '.join([*shown, why])})")
            continue
        sid = students.pop()
        if sid in matched:
            not_in_roster.append(f"line {record.line}: {who}: {sid} is already on line {matched[sid]}, left as it was")
            continue
        matched[sid] = record.line
        notes += _fill_canvas_row(record, grades[sid], lesson_columns)
    missing = [f"lesson {lesson}: no column named like '{lesson} (123456)' in {source.name}, not written"
               for lesson in lessons if lesson not in lesson_columns]
    _write_atomically(out, (bom + "".join(r.text(delimiter) for r in records)).encode("utf-8", "surrogateescape"))
    return LmsReport("canvas", out, tuple(lesson_columns), tuple(sorted(matched)), tuple(not_in_roster),
                     tuple(_describe(r) for r in rows if r["student_id"] not in matched), tuple(missing + notes))


def _fill_canvas_row(record: _Record, row: dict, lesson_columns: dict[str, int]) -> list[str]:
    """Put our scores in one Canvas student row, in place; return notes on cells left alone."""
    notes = []
    for lesson, index in lesson_columns.items():
        score, cell = row.get(lesson, ""), record.value(index)
        if index >= len(record.fields):
            notes.append(f"line {record.line}: {row['student_id']}'s row is shorter than the header, {lesson} not written")
        elif score == "" or score is None:
            notes.append(f"{row['student_id']} {lesson}: no grade yet, Canvas cell left as it was ({cell or 'empty'})")
        elif cell.strip().upper() == "EX":
            notes.append(f"{row['student_id']} {lesson}: excused in Canvas (EX), left as it was")
        elif not _score_equal(cell, score):
            record.fields[index] = plain_number(score)
    return notes


# ---------------------------------------------------------------- Moodle grade import

def moodle_grades(columns: list[str], rows: list[dict], out: str | os.PathLike, id_field: str = "email") -> LmsReport:
    """Write the CSV Moodle's "Import grades > CSV file" takes: an identifier column, then one column per lesson.

    UTF-8 without BOM, comma-separated, a header line, plain numbers ('.' decimal). Moodle reads an
    empty cell as "no grade" and erases the grade it holds, so the file has no empty cell: a lesson
    nobody has a grade for yet is not a column, and a student without a grade to send for one of
    the others (not graded, or held back for review) is left out and reported, with the per-lesson
    export that sends what they have. `id_field` is the Moodle user field the first column is
    mapped to: email (our roster's email), idnumber or username (our student id). A student without
    that value is left out and reported: Moodle stops the whole import at a row whose user it
    cannot find. No total: Moodle computes the course total itself.
    """
    every, out = lessons_of(columns), Path(out)
    if id_field not in MOODLE_ID_FIELDS:
        raise ValueError(f"--moodle-id must be one of {', '.join(MOODLE_ID_FIELDS)}, not {id_field!r}")
    lessons = [l for l in every if any(_has_grade(row, l) for row in rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([MOODLE_ID_FIELDS[id_field], *lessons])
    written, left_out, seen = [], [], {}
    for row in rows:
        key = ((row.get("email") if id_field == "email" else row["student_id"]) or "").strip()
        missing = [l for l in lessons if not _has_grade(row, l)]
        if not key:
            left_out.append(f"{_describe(row)}: no {id_field} in the roster, left out")
        elif key.casefold() in seen:
            left_out.append(f"{_describe(row)}: same {id_field} as {seen[key.casefold()]} ({key}), left out")
        elif missing:
            left_out.append(_gap(row, missing, [l for l in lessons if l not in missing]))
        else:
            seen[key.casefold()] = row["student_id"]
            writer.writerow([key, *(plain_number(row[l]) for l in lessons)])
            written.append(row["student_id"])
    _write_atomically(out, buffer.getvalue().encode("utf-8"))
    notes = [f"in Moodle: Grades > Import > CSV file, Map from '{MOODLE_ID_FIELDS[id_field]}', Map to "
             f"'{MOODLE_MAP_TO[id_field]}', then each lesson column to its grade item"]
    if len(lessons) < len(every):
        notes.append(f"no grade yet for anyone, so not in the file: {', '.join(l for l in every if l not in lessons)}")
    return LmsReport("moodle grades", out, tuple(lessons), tuple(written), (), tuple(left_out), tuple(notes))


def _has_grade(row: dict, lesson: str) -> bool:
    return row.get(lesson) not in ("", None)


def _gap(row: dict, missing: list[str], graded: list[str]) -> str:
    """Why a student with a lesson to leave alone in Moodle is not in the file, and how to send the rest."""
    why = (f"{_describe(row)}: no grade to send for {', '.join(missing)} (an empty cell would erase "
           f"the grade Moodle holds), left out")
    if graded:
        why += "; send their other grades with " + ", ".join(f"`course export {l} --moodle`" for l in graded)
    return why


# ---------------------------------------------------------------- Moodle feedback files

@dataclasses.dataclass(frozen=True)
class _Participant:
    """One row of Moodle's grading worksheet."""
    participant_id: str
    full_name: str
    email: str
    line: int


def read_moodle_worksheet(path: str | os.PathLike) -> list[_Participant]:
    """The participants of Moodle's downloaded grading worksheet (Identifier 'Participant 12345', Full name, email)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: download it in the assignment (Submissions > "
                         f"Download grading worksheet) and pass its path")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    table = list(csv.reader(io.StringIO(text), delimiter=_delimiter(text.split("\n", 1)[0])))
    header = [h.strip() for h in (table[0] if table else [])]
    if "Identifier" not in header or "Full name" not in header:
        raise ValueError(f"{path} is not a Moodle grading worksheet: expected columns 'Identifier' "
                         f"('Participant 12345') and 'Full name' (the assignment's Download grading worksheet, "
                         f"English interface, identities not hidden); found {header[:6]}")
    ident, name = header.index("Identifier"), header.index("Full name")
    email = next((i for i, h in enumerate(header) if h.casefold() in ("email address", "email")), None)
    participants = []
    for line, cells in enumerate(table[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        m = MOODLE_PARTICIPANT.search(cells[ident] if ident < len(cells) else "")
        if not m:
            raise ValueError(f"{path}, line {line}: Identifier {cells[ident] if ident < len(cells) else ''!r} "
                             f"is not 'Participant <number>': download the worksheet from Moodle again")
        participants.append(_Participant(m[1], cells[name].strip() if name < len(cells) else "",
                                         cells[email].strip() if email is not None and email < len(cells) else "",
                                         line))
    return participants


def _match_participants(participants: list[_Participant], rows: list[dict]) -> tuple[dict, list[str], list[str]]:
    """participant -> our student id, by email, else by full name (noted); and the LMS rows not matched."""
    by_email, by_name = {}, {}
    for row in rows:
        if row.get("email"):
            by_email.setdefault(row["email"].strip().casefold(), []).append(row["student_id"])
        for name in {f"{row.get('first_name', '')} {row.get('last_name', '')}",
                     f"{row.get('last_name', '')} {row.get('first_name', '')}"}:
            if squash(name):
                by_name.setdefault(squash(name), set()).add(row["student_id"])
    matched, unmatched, notes = {}, [], []
    for p in participants:
        ids = by_email.get(p.email.casefold(), []) if p.email else []
        how = "email"
        if not ids:
            ids, how = sorted(by_name.get(squash(p.full_name), set())), "full name"
        if len(ids) != 1 or ids[0] in matched.values():
            why = "matches several students" if len(ids) > 1 else ("already matched" if ids else "unknown")
            unmatched.append(f"line {p.line}: {p.full_name or '(no name)'} <{p.email or 'no email'}> "
                             f"Participant {p.participant_id} ({why})")
            continue
        matched[p] = ids[0]
        if how == "full name":
            notes.append(f"Participant {p.participant_id} {p.full_name}: matched to {ids[0]} by full name "
                         f"(the worksheet has {'no' if not p.email else 'another'} email)")
    return matched, unmatched, notes


def moodle_folder(full_name: str, participant_id: str) -> str:
    """The folder Moodle's feedback zip import reads for one participant: 'Jane Doe_12345_assignfeedback_file_'."""
    name = re.sub(r"[_/\\:*?\"<>|\x00-\x1f]+", " ", full_name).strip() or "Participant"
    return f"{name}_{participant_id}_{MOODLE_FEEDBACK_PLUGIN}_"


def moodle_feedback_zip(rows: list[dict], lesson: str, feedback_dir: str | os.PathLike,
                        worksheet: str | os.PathLike, out: str | os.PathLike) -> LmsReport:
    """Zip a lesson's feedback pages in the layout of Moodle's "Upload multiple feedback files in a zip".

    Each matched participant gets `<full name>_<participant id>_assignfeedback_file_/<page>.html`
    (Moodle reads only the participant id; the name is for people). The pages are those `course
    feedback LESSON` wrote to `feedback_dir/<student>/<lesson>/`; a student without one is reported.
    """
    from .gradebook import check_lesson
    check_lesson(lesson)
    out, feedback_dir = Path(out), Path(feedback_dir)
    participants = read_moodle_worksheet(worksheet)
    matched, not_in_roster, notes = _match_participants(participants, rows)
    buffer, written = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for participant, sid in sorted(matched.items(), key=lambda item: item[1]):
            pages = sorted((feedback_dir / sid / lesson).glob("*.html"))
            if not pages:
                notes.append(f"{sid}: no feedback page in {feedback_dir / sid / lesson}: run `course feedback {lesson}`")
                continue
            folder = moodle_folder(participant.full_name, participant.participant_id)
            for page in pages:
                archive.write(page, f"{folder}/{page.name}")
            written.append(sid)
    if not written:
        raise ValueError(f"no feedback page to zip for {lesson}: {len(matched)} of {len(participants)} worksheet "
                         f"rows matched a student" + (f" and none has a page: run `course feedback {lesson}`"
                                                      if matched else ": check the worksheet is this course's"))
    _write_atomically(out, buffer.getvalue())
    in_worksheet = set(matched.values())
    not_in_lms = [_describe(r) for r in rows if r["student_id"] not in in_worksheet]
    return LmsReport("moodle feedback", out, (lesson,), tuple(written), tuple(not_in_roster), tuple(not_in_lms),
                     tuple(notes))


# ---------------------------------------------------------------- the course's entry point

def export_for_lms(course: "Course", to: str | os.PathLike, *, lesson: str | None = None,
                   canvas: str | os.PathLike | None = None, moodle: bool = False, moodle_id: str = "email",
                   moodle_feedback: str | os.PathLike | None = None) -> LmsReport:
    """`course export` for an LMS: the course's grade rows written by exactly one of the three writers."""
    from .overview import grade_rows, note_export
    chosen = [name for name, on in (("--canvas", canvas), ("--moodle", moodle), ("--moodle-feedback", moodle_feedback))
              if on]
    if len(chosen) != 1:
        raise ValueError(f"pass exactly one of --canvas GRADEBOOK.csv, --moodle, --moodle-feedback WORKSHEET.csv"
                         f"{' (got ' + ', '.join(chosen) + ')' if chosen else ''}")
    if moodle_feedback and not lesson:
        raise ValueError("--moodle-feedback zips one lesson's pages: name it, e.g. "
                         "`course export 05_gradcam --moodle-feedback worksheet.csv --to feedback.zip`")
    columns, rows = grade_rows(course, [lesson] if lesson else None)
    if moodle_feedback:
        return moodle_feedback_zip(rows, lesson, course.root / "feedback", moodle_feedback, to)
    report = canvas_upload(columns, rows, canvas, to) if canvas else moodle_grades(columns, rows, to, moodle_id)
    note_export(course, list(report.lessons), Path(to))
    return report
