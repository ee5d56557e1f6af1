"""The grade that leaves: the computed score, then a review decision, then the late policy.

`course export` (every format), the per-lesson export and the feedback page all take a student's
grade from `final_grade`, so they agree. A flagged submission no one has reviewed is held back
(no score leaves) unless the instructor asks to include it, and then it is marked.
"""
from __future__ import annotations

import dataclasses

from .gradebook import NOT_GRADED, Course, Outcome
from .late import CourseConfig, lateness, read_config, record_path
from .review import Decision, latest


@dataclasses.dataclass(frozen=True)
class Final:
    """What leaves for one student and lesson, and every note on how it was reached."""
    outcome: Outcome
    score: float | None          # None: no grade leaves (not graded, or held for review)
    held: bool                   # flagged, waiting for review
    notes: tuple[str, ...]       # the review decision, the late deduction


def final_grade(course: Course, o: Outcome, decision: Decision | None, config: CourseConfig,
                include_unreviewed: bool = False) -> Final:
    """The score that leaves for this outcome: reviewed, then the late policy applied."""
    if o.score is None or o.status == NOT_GRADED:
        return Final(o, None, False, ())
    notes, score = [], o.score
    applies = decision is not None and decision.applies_to(o)
    if applies:
        score = decision.score
        notes.append(decision.describe())
    elif decision is not None:
        notes.append(f"the last review ({decision.decided_at[:10]}) was of another score or result: to be reviewed again")
    held = o.status == "flagged" and not applies
    if held:
        notes.append("flagged and not reviewed yet" + (": included on request, unreviewed" if include_unreviewed
                                                         else ": held back until `course review` decides"))
    late = lateness(config, o.assignment, o.student_id, course.folder(course.submitted, o.student_id, o.assignment),
                    record_path(course.root, o.student_id, o.assignment))
    if late is not None and o.status != "missing":
        score = late.apply(score, o.max_score or 0.0)
        notes.append("late: " + late.describe(config.policy))
    return Final(o, None if held and not include_unreviewed else round(score, 4), held, tuple(notes))


def final_grades(course: Course, lesson: str, outcomes: list[Outcome],
                 include_unreviewed: bool = False) -> dict[str, Final]:
    """`final_grade` of each outcome of one lesson (decisions and course.toml read once)."""
    decided, config = latest(course, lesson), read_config(course.root)
    return {o.student_id: final_grade(course, o, decided.get(o.student_id), config, include_unreviewed)
            for o in outcomes}
