"""`course review`: a person decides what a machine should not — flagged, failed and partly graded work.

Every decision (accept the computed score, set another, or zero it, with a note) is kept in the
course's gradebook database, in a table of its own beside nbgrader's, with when it was made and by
whom; earlier decisions stay as history. A decision holds for the result it was made on (its
fingerprint) and the score it saw: when the submission is graded again or a manual grade changes
that score, the decision no longer applies and the submission waits for review again, never
silently keeping or dropping the old decision. Until a flagged submission is reviewed, its score
does not leave in an export (see `overview.grade_rows`).
"""
from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
import re

from .gradebook import NOT_GRADED, Course, CourseError, Outcome, check_lesson, outcome, outcomes, require_gradebook

ACTIONS = ("accept", "set", "zero")
TABLE = "course_review"
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, assignment TEXT NOT NULL, "
           "student TEXT NOT NULL, action TEXT NOT NULL, score REAL NOT NULL, computed REAL NOT NULL, "
           "fingerprint TEXT NOT NULL, note TEXT NOT NULL, decided_at TEXT NOT NULL, decided_by TEXT NOT NULL)")


@dataclasses.dataclass(frozen=True)
class Decision:
    """One review decision: the score it gives, the computed score and result it was made on, and why."""
    assignment: str
    student: str
    action: str                 # accept, set or zero
    score: float                # the score the decision gives
    computed: float             # the score the grader (and any manual grades) gave when it was made
    fingerprint: str            # the result it was made on
    note: str
    decided_at: str             # UTC, ISO 8601
    decided_by: str

    def applies_to(self, o: Outcome) -> bool:
        """Does this decision still hold: the same result, and the same score as when it was made?"""
        return (o.result is not None and o.result.get("fingerprint") == self.fingerprint
                and o.score is not None and abs(o.score - self.computed) < 1e-9)

    def describe(self) -> str:
        what = {"accept": f"accepted {self.score:g}", "set": f"set to {self.score:g} (computed {self.computed:g})",
                "zero": f"set to 0 (computed {self.computed:g})"}[self.action]
        return f"reviewed {self.decided_at[:16].replace('T', ' ')} UTC by {self.decided_by}: {what}" + \
            (f" — {self.note}" if self.note else "")


@dataclasses.dataclass(frozen=True)
class Item:
    """One submission to look at: its outcome, why it is here, what shows it, and the decision on it."""
    outcome: Outcome
    why: str                    # flagged, failed, partly graded, needs manual grading
    evidence: tuple[str, ...]   # the flagged lines and failed cells, with what the notebook shows there
    decision: Decision | None   # the latest decision (it may no longer apply)

    @property
    def waiting(self) -> bool:
        """Flagged and no decision applies: its score is held back from exports until someone decides."""
        return self.why == "flagged" and not (self.decision and self.decision.applies_to(self.outcome))

    @property
    def reopened(self) -> bool:
        """A decision was made, but the score or result changed since: to be reviewed again."""
        return self.decision is not None and not self.decision.applies_to(self.outcome)


# ----------------------------------------------------------------------------- storage
def _ensure_table(gb) -> None:
    from sqlalchemy import text
    gb.db.execute(text(_SCHEMA))


def _has_table(gb) -> bool:
    import sqlalchemy
    return sqlalchemy.inspect(gb.db.get_bind()).has_table(TABLE)


def history(course: Course, assignment: str) -> dict[str, list[Decision]]:
    """student -> every decision on their submission of the lesson, oldest first."""
    from sqlalchemy import text
    require_gradebook(course, f"course grade {assignment}")
    with course.gradebook() as gb:
        if not _has_table(gb):
            return {}                       # no decision yet; a read never writes the gradebook
        rows = gb.db.execute(text(f"SELECT assignment, student, action, score, computed, fingerprint, note, "
                                  f"decided_at, decided_by FROM {TABLE} WHERE assignment = :a ORDER BY id"),
                             {"a": assignment}).fetchall()
    out: dict[str, list[Decision]] = {}
    for row in rows:
        out.setdefault(row[1], []).append(Decision(*row))
    return out


def latest(course: Course, assignment: str) -> dict[str, Decision]:
    """student -> their latest decision on the lesson."""
    return {student: made[-1] for student, made in history(course, assignment).items()}


def decide(course_dir, assignment: str, student: str, action: str, score: float | None = None,
           note: str = "", by: str | None = None) -> Decision:
    """Record a decision on a student's current result: accept its score, set another, or zero it."""
    from sqlalchemy import text
    check_lesson(assignment)
    if action not in ACTIONS:
        raise ValueError(f"a review decision is one of {', '.join(ACTIONS)}, not {action!r}")
    if (action == "set") != (score is not None):
        raise ValueError("give a score with --set (and only with --set), e.g. --set 4.5")
    course = Course.open(course_dir)
    require_gradebook(course, f"course grade {assignment}")
    o = outcome(course, assignment, student)
    if o.result is None or o.status == NOT_GRADED or o.score is None:
        raise CourseError(f"{student} has no current grade for {assignment} to review "
                          f"({'; '.join(o.reasons) or o.status}): run `course grade {assignment}` first")
    top = o.max_score if o.max_score is not None else o.score
    if action == "set" and not 0 <= score <= top:
        raise ValueError(f"--set takes a score between 0 and {top:g} (the lesson's points), not {score:g}")
    given = {"accept": o.score, "set": score, "zero": 0.0}[action]
    made = Decision(assignment, student, action, float(given), float(o.score), o.result["fingerprint"],
                    note.strip(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    by or _user())
    with course.gradebook() as gb:
        _ensure_table(gb)
        gb.db.execute(text(f"INSERT INTO {TABLE} (assignment, student, action, score, computed, fingerprint, note, "
                           "decided_at, decided_by) VALUES (:assignment, :student, :action, :score, :computed, "
                           ":fingerprint, :note, :decided_at, :decided_by)"), dataclasses.asdict(made))
        gb.db.commit()
    return made


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "instructor"


# ----------------------------------------------------------------------------- what to review
def why_review(o: Outcome, needs_manual: bool = False) -> str:
    """Why a person should look at this submission ('' if there is no reason)."""
    if o.status == "flagged":
        return "flagged"
    if o.status == "failed":
        return "failed"
    if needs_manual:
        return "needs manual grading"
    if o.status == "graded" and o.score is not None and o.max_score and o.score < o.max_score - 1e-9:
        return "partly graded"
    return ""


def queue(course_dir, assignment: str, everything: bool = False) -> list[Item]:
    """The lesson's flagged, failed, partly graded and manually graded submissions, waiting ones first."""
    check_lesson(assignment)
    course = Course.open(course_dir)
    require_gradebook(course, f"course grade {assignment}")
    decided, manual = latest(course, assignment), _needs_manual(course, assignment)
    items = []
    for o in outcomes(course, assignment):
        why = why_review(o, o.student_id in manual)
        if why or (everything and o.student_id in decided):
            items.append(Item(o, why or "graded", tuple(evidence(course, o)), decided.get(o.student_id)))
    return sorted(items, key=lambda i: (not i.waiting, not i.reopened, ("flagged", "failed").count(i.why) == 0,
                                        i.outcome.student_id))


def _needs_manual(course: Course, assignment: str) -> set[str]:
    from nbgrader.api import MissingEntry
    with course.gradebook() as gb:
        try:
            return {s.student.id for s in gb.find_assignment(assignment).submissions if s.needs_manual_grade}
        except MissingEntry:
            return set()


_FLAG = re.compile(r"cell '(?P<cell>[^']+)': line (?P<line>\d+)")


def evidence(course: Course, o: Outcome) -> list[str]:
    """The lines a flag names (as the autograded notebook has them) and each failed cell's error."""
    import nbformat
    if o.result is None:
        return []
    cells = {}
    for path in sorted(course.folder(course.autograded, o.student_id, o.assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            cells[cell.metadata.get("nbgrader", {}).get("grade_id") or f"#{i + 1}"] = cell
    shown = []
    for reason in o.reasons:
        m = _FLAG.search(reason)
        if m and m["cell"] in cells:
            lines = cells[m["cell"]].source.splitlines()
            n = int(m["line"])
            if 0 < n <= len(lines):
                shown.append(f"{m['cell']}, line {n}: {lines[n - 1].strip()[:200]}")
    for grade_id, (score, top, why) in sorted((o.result.get("cells") or {}).items()):
        if score < top and why:
            shown.append(f"{grade_id}: {score:g}/{top:g}: {why[:300]}")
    return shown


def effective_score(o: Outcome, decision: Decision | None) -> float | None:
    """The score that counts: a decision that still applies, else the computed one."""
    return decision.score if decision is not None and decision.applies_to(o) else o.score


def item_text(item: Item) -> str:
    """One item as the review command prints it."""
    o = item.outcome
    state = ("WAITING for review" if item.waiting else
             "REOPENED: the score or result changed since the last decision" if item.reopened else
             item.decision.describe() if item.decision else "no decision needed to export")
    lines = [f"{o.student_id}  {o.assignment}  {o.score:g}/{o.max_score:g}  {item.why}  — {state}"
             if o.score is not None and o.max_score is not None else f"{o.student_id}  {o.assignment}  {item.why}"]
    lines += [f"    reason: {r}" for r in o.reasons]
    lines += [f"    shows:  {e}" for e in item.evidence]
    if item.decision and (item.reopened or not item.waiting):
        lines.append(f"    last decision: {item.decision.describe()}")
    return "\n".join(lines)


def to_json(items: list[Item]) -> str:
    """The queue as JSON, for scripts."""
    return json.dumps([{"student_id": i.outcome.student_id, "assignment": i.outcome.assignment,
                        "score": i.outcome.score, "max_score": i.outcome.max_score, "why": i.why,
                        "waiting": i.waiting, "reopened": i.reopened, "reasons": list(i.outcome.reasons),
                        "evidence": list(i.evidence),
                        "decision": dataclasses.asdict(i.decision) if i.decision else None} for i in items], indent=1)
