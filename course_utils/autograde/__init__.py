"""The grading engine behind `course grade` and `course export`.

One module per step: `assemble` (the instructor's notebook with the student's answers), `scan`
(flags for a person), `sandbox` (what a run may touch), `execute` (sandboxed runs in forked
children), `worker` (the process that pays the imports once), `score` (nbgrader's rule, with
reasons), `gradebook` (nbgrader's gradebook and course folder), `grade` (the whole run), `cli`.
"""
from .gradebook import EXPORT_COLUMNS, Course, CourseError, export_rows
from .grade import Report, Result, SandboxUnavailable, grade
from .sandbox import Limits

__all__ = ["grade", "export_rows", "Report", "Result", "Limits", "Course", "CourseError",
           "SandboxUnavailable", "EXPORT_COLUMNS"]
