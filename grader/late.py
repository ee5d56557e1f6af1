"""Late work: due dates, extensions and a late policy from the course's `course.toml`.

    [due]                                   # per lesson; a time zone is required
    "05_gradcam" = 2026-12-10T23:59:00+01:00
    [extensions.jdoe]                       # per student and lesson: a later due date
    "05_gradcam" = 2026-12-12T23:59:00+01:00
    [late]
    grace_minutes = 15                      # not late within this
    per_day_percent = 10                    # of the lesson's points, per started day after the grace
    cap_percent = 50                        # never more than this in all
    refuse_after_days = 7                   # later than this: 0 points (leave out: never refused)

The hand-in time is what `course collect` recorded (`handins/<id>/<lesson>.json` in the course
folder, where no submission can write: the time stored in the LMS download's zip, or the file's
modification time, which one, and the placed notebook's hash, so a record stops applying when the
notebook is replaced by other means), else nbgrader's `timestamp.txt`
(what `nbgrader submit` or `collect` wrote), else the notebook file's modification time; which one
was used is reported with the deduction. The policy is applied where grades leave (export, the
feedback page), never to the gradebook's computed score.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import tomllib
from pathlib import Path

CONFIG = "course.toml"
HANDINS = "handins"          # <course>/handins/<id>/<lesson>.json: collect's record, outside submitted/
_POLICY_KEYS = {"grace_minutes", "per_day_percent", "cap_percent", "refuse_after_days"}


class ConfigError(ValueError):
    """course.toml cannot be used; the message names the line to fix."""


@dataclasses.dataclass(frozen=True)
class LatePolicy:
    """How lateness costs points: a grace period, a deduction per started day, a cap, or a refusal."""
    grace_minutes: float = 0.0
    per_day_percent: float = 0.0
    cap_percent: float = 100.0
    refuse_after_days: float | None = None

    def describe(self) -> str:
        parts = [f"{self.per_day_percent:g} % of the points per started day late"]
        if self.grace_minutes:
            parts.append(f"after {self.grace_minutes:g} minutes' grace")
        if self.cap_percent < 100:
            parts.append(f"at most {self.cap_percent:g} %")
        if self.refuse_after_days is not None:
            parts.append(f"not accepted more than {self.refuse_after_days:g} days late")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class CourseConfig:
    """Due dates per lesson, extensions per student and lesson, the late policy."""
    due: dict[str, datetime.datetime]
    extensions: dict[str, dict[str, datetime.datetime]]
    policy: LatePolicy

    def due_for(self, lesson: str, student: str) -> tuple[datetime.datetime | None, bool]:
        """(the due date that applies, whether it is an extension)."""
        extended = self.extensions.get(student, {}).get(lesson)
        return (extended, True) if extended else (self.due.get(lesson), False)


NO_CONFIG = CourseConfig({}, {}, LatePolicy())


@dataclasses.dataclass(frozen=True)
class HandIn:
    """When a submission was handed in, and how we know."""
    time: datetime.datetime
    source: str
    lms_late_mark: bool = False


@dataclasses.dataclass(frozen=True)
class Lateness:
    """How late a submission is and what it costs."""
    seconds_late: float
    due: datetime.datetime
    extended: bool
    handed_in: HandIn
    percent: float              # of the lesson's points
    refused: bool

    def apply(self, score: float, max_score: float) -> float:
        """The score after the policy: 0 if refused, else minus `percent` of the points, never below 0."""
        return 0.0 if self.refused else max(0.0, score - max_score * self.percent / 100)

    def describe(self, policy: LatePolicy) -> str:
        late = _duration(self.seconds_late)
        due = f"{'extended ' if self.extended else ''}due {self.due.isoformat(sep=' ', timespec='minutes')}"
        head = (f"handed in {self.handed_in.time.astimezone(self.due.tzinfo).isoformat(sep=' ', timespec='minutes')}"
                f" ({self.handed_in.source}), {late} after the {due}")
        if self.refused:
            return f"{head}: not accepted, 0 points ({policy.describe()})"
        if self.percent == 0:
            return f"{head}: within the grace period, no deduction"
        return f"{head}: -{self.percent:g} % of the points ({policy.describe()})"


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days} d " if days else "") + f"{hours} h {rest // 60} min"


# ----------------------------------------------------------------------------- reading course.toml
def read_config(course_root: str | Path) -> CourseConfig:
    """The course's late-work settings; no course.toml means no due dates (nothing is late)."""
    path = Path(course_root) / CONFIG
    if not path.is_file():
        return NO_CONFIG
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({e}): fix that line") from None
    unknown = set(data) - {"due", "extensions", "late", "workers"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}: use [due], [extensions.ID], "
                          "[late], [workers]")
    due = {lesson: _when(value, f"{path} [due] {lesson}") for lesson, value in _table(data, "due", path).items()}
    extensions = {}
    for student, lessons in _table(data, "extensions", path).items():
        if not isinstance(lessons, dict):
            raise ConfigError(f"{path}: [extensions.{student}] should be a table of lesson = due date")
        extensions[student] = {lesson: _when(v, f"{path} [extensions.{student}] {lesson}") for lesson, v in lessons.items()}
    return CourseConfig(due, extensions, _policy(_table(data, "late", path), path))


def workers_table(course_root: str | Path) -> dict:
    """course.toml's [workers] table as written (`grader.pool.settings` reads it); {} without one."""
    path = Path(course_root) / CONFIG
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({e}): fix that line") from None
    return _table(data, "workers", path)


def _table(data: dict, name: str, path: Path) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: `{name}` should be a table ([{name}])")
    return value


def _when(value, where: str) -> datetime.datetime:
    """A due date: a TOML date-time or an ISO 8601 string, with its time zone."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a date and time; write e.g. "
                              "2026-12-10T23:59:00+01:00") from None
    if not isinstance(value, datetime.datetime):
        raise ConfigError(f"{where}: {value!r} is not a date and time; write e.g. 2026-12-10T23:59:00+01:00")
    if value.tzinfo is None:
        raise ConfigError(f"{where}: {value.isoformat()} has no time zone; add one, e.g. "
                          f"{value.isoformat()}+01:00 or {value.isoformat()}Z")
    return value


def _policy(table: dict, path: Path) -> LatePolicy:
    if unknown := set(table) - _POLICY_KEYS:
        raise ConfigError(f"{path} [late]: unknown setting(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_POLICY_KEYS))}")
    values = {}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{path} [late] {key} = {value!r}: give a number, 0 or more")
        values[key] = float(value)
    for key in ("per_day_percent", "cap_percent"):
        if values.get(key, 0) > 100:
            raise ConfigError(f"{path} [late] {key} = {values[key]:g}: a percentage is at most 100")
    return LatePolicy(**values)


# ----------------------------------------------------------------------------- when, and how late
def record_path(course_root: str | Path, student: str, lesson: str) -> Path:
    """Where `course collect` records a submission's hand-in time (outside submitted/, which students fill)."""
    return Path(course_root) / HANDINS / student / f"{lesson}.json"


def notebook_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hand_in_time(folder: Path, record: Path | None = None) -> HandIn | None:
    """When the submission in `folder` was handed in: collect's `record` (if it is of the notebook now
    in the folder), nbgrader's timestamp, the file. Nothing in `folder` itself is read as collect's."""
    from nbgrader.utils import parse_utc
    try:
        data = json.loads(record.read_text()) if record is not None else {}
        when = datetime.datetime.fromisoformat(data["time"])
        placed = {notebook_hash(p.read_bytes()) for p in folder.glob("*.ipynb") if p.is_file()}
        if when.tzinfo is not None and data.get("sha256") in placed:
            return HandIn(when, f"{data.get('source', 'course collect')}, recorded by course collect",
                          bool(data.get("lms_late_mark")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        stamp = parse_utc((folder / "timestamp.txt").read_text().strip())
        return HandIn(stamp.replace(tzinfo=stamp.tzinfo or datetime.timezone.utc), "nbgrader's timestamp.txt")
    except (OSError, ValueError, OverflowError):
        pass
    notebooks = [p for p in folder.glob("*.ipynb") if p.is_file()] if folder.is_dir() else []
    if not notebooks:
        return None
    newest = max(p.stat().st_mtime for p in notebooks)
    return HandIn(datetime.datetime.fromtimestamp(newest, datetime.timezone.utc), "the notebook file's modification time")


def lateness(config: CourseConfig, lesson: str, student: str, folder: Path,
             record: Path | None = None) -> Lateness | None:
    """How late this submission is (None: no due date, nothing handed in, or on time)."""
    due, extended = config.due_for(lesson, student)
    if due is None:
        return None
    handed = hand_in_time(folder, record)
    if handed is None:
        return None
    seconds = (handed.time - due).total_seconds()
    if seconds <= 0:
        return None
    policy = config.policy
    refused = policy.refuse_after_days is not None and seconds > policy.refuse_after_days * 86400
    after_grace = seconds - policy.grace_minutes * 60
    days = math.ceil(after_grace / 86400) if after_grace > 0 else 0
    percent = min(policy.cap_percent, days * policy.per_day_percent)
    return Lateness(seconds, due, extended, handed, percent, refused)
