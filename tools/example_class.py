"""Generate examples/class/: a fictional class of twelve and what an LMS hands the instructor.

    PYTHONPATH=. python tools/example_class.py            # rewrite examples/class/ from the lessons
    PYTHONPATH=. python tools/example_class.py --check    # exit 1 if examples/class/ is out of date

`roster.csv` is nbgrader's student list. `01_setup.zip` is a Canvas bulk download
(`lastnamefirstname_userid_submissionid_file`, `_LATE_`, `-1` for a second upload) and
`05_gradcam.zip` a Moodle one (`Full Name_userid_assignsubmission_file_/file`), with a zip inside it.
Every notebook is built from the released lesson by tools/classroom.py, so the class stays in step
with the lessons; entries are sorted and carry fixed times, so the zips are the same byte for byte on
every run (tests/test_example_class.py checks it). PLANS says what each student hands in.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import zipfile

import classroom                       # tools/ is on sys.path: this script's folder, or put there by the tests
from grader.layout import EXAMPLE_CLASS as OUT, ROOT
from grader.roster import squash

LESSONS = ("01_setup", "05_gradcam")
# id, first name, last name, LMS user id
STUDENTS = [("aokafor", "Adaeze", "Okafor", 1101), ("blindqvist", "Björn", "Lindqvist", 1102),
            ("cwei", "Chen", "Wei", 1103), ("dvolkov", "Dmitri", "Volkov", 1104),
            ("egarcia", "Elena", "Garcia", 1105), ("fhaddad", "Farah", "Haddad", 1106),
            ("gsantos", "Gabriel", "Santos", 1107), ("hsato", "Hana", "Sato", 1108),
            ("ipetrov", "Ivan", "Petrov", 1109), ("jnovak", "Julia", "Novak", 1110),
            ("kmensah", "Kofi", "Mensah", 1111), ("lfischer", "Lena", "Fischer", 1112)]
# What each student hands in per lesson (absent: nothing). See `notebook()` for each plan.
PLANS = {
    "aokafor": {"01_setup": "correct", "05_gradcam": "correct"},
    "blindqvist": {"01_setup": "correct", "05_gradcam": "partly"},
    "cwei": {"01_setup": "partly", "05_gradcam": "correct"},
    "dvolkov": {"01_setup": "blank", "05_gradcam": "partly"},
    "egarcia": {"01_setup": "renamed", "05_gradcam": "renamed"},
    "fhaddad": {"01_setup": "stripped", "05_gradcam": "stripped"},
    "gsantos": {"01_setup": "duplicate", "05_gradcam": "correct"},
    "hsato": {},
    "ipetrov": {"01_setup": "writer", "05_gradcam": "correct"},
    "jnovak": {"01_setup": "correct", "05_gradcam": "loop"},
    "kmensah": {"01_setup": "tamper", "05_gradcam": "correct"},
    "lfischer": {"01_setup": "late", "05_gradcam": "nested"},
}
# Loops forever in an answer cell, then answers: the grader stops the cell (and only that exercise is lost).
LOOP_CELL, LOOP = "grad_cam_map", "while True:\n    pass\n"
# Writes the course's gradebook from inside the sandbox (denied), then answers correctly.
WRITER = ("import pathlib\ntry:\n    pathlib.Path('../../../gradebook.db').write_text('all A+')\n"
          "except OSError as e:\n    print('not allowed:', type(e).__name__)\n")
# Makes the hidden checks of prob_cat pass whatever the answer: flagged for a person to review.
TAMPER = ("import course_utils.checks\ncourse_utils.checks.check_tensor = lambda *args, **kwargs: None\n"
          "def prob_cat(model, x):\n    return torch.full((len(x),), 0.5)\n")


def _with(lesson: str, grade_id: str, before: str = "", instead: str | None = None):
    """The correct notebook with one answer changed: code put before it, or the answer replaced."""
    typed = {grade_id: instead if instead is not None else before + classroom.answers(lesson)[grade_id]}
    return classroom.submission(lesson, "correct", wrong=typed)


def notebook(lesson: str, plan: str):
    """The notebook a student with this plan hands in."""
    if plan in classroom.KINDS:
        return classroom.submission(lesson, plan)
    if plan == "writer":
        return _with(lesson, "is_cat", before=WRITER)
    if plan == "loop":
        return _with(lesson, LOOP_CELL, before=LOOP)
    if plan == "tamper":
        return _with(lesson, "prob_cat", instead=TAMPER)
    if plan == "late":
        return classroom.submission(lesson, "partly")
    return classroom.submission(lesson, "correct")          # renamed, duplicate, nested: the file name differs


def _bytes(nb) -> bytes:
    return json.dumps(nb, indent=1).encode()


def _stamp(day: int, hour: int) -> tuple:
    return (2026, 11, day, hour, 0, 0)


def _handing_in(lesson: str):
    """(position, first name, last name, LMS user id, plan) of each student who hands in this lesson."""
    for n, (sid, first, last, uid) in enumerate(STUDENTS):
        if PLANS[sid].get(lesson):
            yield n, first, last, uid, PLANS[sid][lesson]


def canvas_entries(lesson: str) -> dict[str, tuple[bytes, tuple]]:
    """Canvas bulk download: one entry per upload, named lastnamefirstname_userid_submissionid_file."""
    entries = {}
    for n, first, last, uid, plan in _handing_in(lesson):
        login = squash(last + first)                  # Canvas logins: lastnamefirstname, ASCII
        late = "_LATE" if plan == "late" else ""
        name = f"Copy of {lesson} (1).ipynb" if plan == "renamed" else f"{lesson}.ipynb"
        when = _stamp(28 if plan == "late" else 20, 9 + n)
        if plan == "duplicate":      # an earlier, partly done upload; Canvas names the later one -1
            entries[f"{login}_{uid}_{4000 + n}_{name}"] = (_bytes(notebook(lesson, "partly")), _stamp(18, 9))
            name = f"{lesson}-1.ipynb"
        entries[f"{login}{late}_{uid}_{5000 + n}_{name}"] = (_bytes(notebook(lesson, plan)), when)
    entries[f"okaforadaeze_1101_5000_{lesson}_notes.pdf"] = (b"%PDF-1.4 (a scan of handwritten notes)\n", _stamp(20, 9))
    entries[f"smithjordan_1999_5999_{lesson}.ipynb"] = (_bytes(notebook(lesson, "correct")), _stamp(21, 9))
    return entries


def moodle_entries(lesson: str) -> dict[str, tuple[bytes, tuple]]:
    """Moodle bulk download: a folder per student and submission plugin, the files inside."""
    entries = {}
    for n, first, last, uid, plan in _handing_in(lesson):
        folder = f"{first} {last}_{uid}_assignsubmission_file_"
        when = _stamp(22, 9 + n)
        data = _bytes(notebook(lesson, plan))
        if plan == "nested":
            data = zip_bytes({f"{lesson}.ipynb": (data, when)})
            entries[f"{folder}/handin.zip"] = (data, when)
        else:
            name = f"{lesson}-2.ipynb" if plan == "renamed" else f"{lesson}.ipynb"
            entries[f"{folder}/{name}"] = (data, when)
    entries["Lena Fischer_1112_assignsubmission_onlinetext_/onlinetext.html"] = (b"<p>My notebook is in the zip.</p>\n",
                                                                                 _stamp(22, 20))
    return entries


def zip_bytes(entries: dict[str, tuple[bytes, tuple]]) -> bytes:
    """A zip with sorted entries and fixed times and attributes: the same bytes on every run."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            data, when = entries[name]
            info = zipfile.ZipInfo(name, when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=6)
    return buf.getvalue()


def roster_csv() -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "first_name", "last_name", "email"])
    for sid, first, last, _ in STUDENTS:
        writer.writerow([sid, first, last, f"{sid}@students.example.edu"])
    return buf.getvalue().encode()


def build() -> dict[str, bytes]:
    """Every file of examples/class/, by name."""
    return {"roster.csv": roster_csv(), "01_setup.zip": zip_bytes(canvas_entries("01_setup")),
            "05_gradcam.zip": zip_bytes(moodle_entries("05_gradcam"))}


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [name for name, data in files.items() if not (OUT / name).is_file() or (OUT / name).read_bytes() != data]
        if stale:
            print(f"examples/class/ is out of date ({', '.join(stale)}): run PYTHONPATH=. python tools/example_class.py")
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {', '.join(sorted(files))} to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
