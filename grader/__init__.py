"""The grader: the instructor's workflow behind the `course` command: release, collect, grade, feedback, export, status.

One module per step: `release` (student notebooks and gradebook entries), `roster` and `collect`
(what students hand in, placed where nbgrader expects it), the grading engine — `assemble` (the
instructor's notebook with the student's answers), `scan` (flags for a person), `sandbox` (what a
run may touch), `execute` (sandboxed runs in forked children), `worker` (the process that pays the
imports once), `examiner` (the process that runs the test cells and decides every verdict),
`protocol` and `student_side` (the by-value channel to the student's process and its end of it),
`tripwire` (an audit hook in the student's process: flags for review), `score` (nbgrader's rule,
with reasons), `gradebook` (nbgrader's gradebook and course folder), `grade` (the whole run) —,
`reference` (answers taken from course_utils: flags for review),
`feedback` (pages that explain), `overview` (grades of every lesson, status), the term — `review`
(a person's decisions on flagged work), `late` (due dates and the late policy of `course.toml`),
`final` (the grade that leaves: reviewed, then late), `similarity` (alike solutions, copydetect),
`lms` (Canvas and Moodle files) —, `pool` (warm workers that outlive a call), `workflow` (all of it on the
example class) and `cli`.

Importing the package imports none of them: `course status` must not pay for what `course grade`
needs. Import what you use from its module, e.g. `from grader.grade import grade`.
"""
