"""`course feedback`: one HTML page per student, nbgrader's feedback with a summary that explains.

The page is nbgrader's own (its `GetGrades` preprocessor and `feedback` template, on the notebook
`course grade` wrote to `autograded/`), with a summary on top: points per exercise and, for every
lost point, the reason in words (a visible or hidden test failed and its message, no answer, a
time or memory limit, a crash, a missing notebook, restored cells, a flag for review). The status
is `gradebook.outcome`'s, as in `course status` and `course export`: a submission no grading run
reached, or handed in again since, is "not graded" and its page says why instead of showing a grade.

Hidden tests stay hidden: the autograded notebook holds their source, and tracebacks quote the
lines they ran, so before rendering every hidden block is replaced by a note and the outputs of
test cells keep only the error's type and message.
"""
from __future__ import annotations

import copy
import dataclasses
import html
import os
import re
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .final import final_grade
from .late import CourseConfig, read_config
from .review import Decision, latest
from .gradebook import NOT_GRADED, Course, CourseError, Outcome, check_lesson, outcome, require_gradebook

HIDDEN = re.compile(r"^[ \t]*#+[ \t]*BEGIN HIDDEN TESTS.*?(?:^[ \t]*#+[ \t]*END HIDDEN TESTS[^\n]*$|\Z)", re.M | re.S)
HIDDEN_NOTE = "# (hidden tests: run by the grader, not shown)"
# the test cell's own frame: IPython's two spellings, and the examiner's (File "<test cell test_is_cat>", line 7)
_FRAME = re.compile(r'File "<(?:ipython-input-[^>]*|test cell [^>]*)>", line (\d+)|Cell In\[\d+\], line (\d+)')
_EVENT_CELL = re.compile(r"cell #(\d+)")


@dataclasses.dataclass(frozen=True)
class Lost:
    """Points lost on one exercise (a graded cell), and why in words."""
    grade_id: str
    score: float | None              # None: a written answer still to be graded by a person
    max_score: float
    reason: str


@dataclasses.dataclass(frozen=True)
class Page:
    """One student's feedback page on one lesson."""
    student_id: str
    lesson: str
    path: Path
    status: str                      # `gradebook.outcome`'s, as in `course status` and `course export`
    score: float                     # 0 while "not graded" (the page then shows no score, only why)
    max_score: float
    exercises: tuple[Lost, ...]      # every graded cell, in notebook order (reason empty when all points kept)
    notes: tuple[str, ...]           # what happened to the submission as a whole

    @property
    def lost(self) -> tuple[Lost, ...]:
        """The exercises where points were lost (or wait for a person)."""
        return tuple(e for e in self.exercises if e.score is None or e.score < e.max_score)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def hide_tests(nb: NotebookNode) -> NotebookNode:
    """A copy of the notebook with hidden test blocks and test-cell tracebacks removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        hidden = bool(HIDDEN.search(cell.source))
        cell.source = HIDDEN.sub(HIDDEN_NOTE, cell.source)
        if hidden or (_meta(cell).get("grade") and not _meta(cell).get("solution")):
            cell.outputs = [_bare(o) for o in cell.get("outputs", []) if _bare(o) is not None]
    return nb


def _bare(out) -> NotebookNode | None:
    """A test cell's output without what could quote the test: errors keep type and message only."""
    if out.output_type == "error":
        return nbformat.from_dict({"output_type": "error", "ename": out.ename, "evalue": out.evalue,
                                   "traceback": [f"{out.ename}: {out.evalue}"]})
    if out.output_type == "stream" and out.name == "stderr":
        return None          # warnings print the source line that raised them
    return out


def _hidden_from(source: str) -> int | None:
    """The first line number (1-based) of the cell's hidden tests, or None."""
    m = HIDDEN.search(source)
    return source[: m.start()].count("\n") + 1 if m else None


def _failed_line(cell) -> int | None:
    """The line of the test cell where its error was raised (from the traceback), if known."""
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            for line in out.get("traceback", []):
                if m := _FRAME.search(re.sub(r"\x1b\[[0-9;]*m", "", line)):
                    return int(m[1] or m[2])
    return None


def _error(cell) -> str | None:
    """The name of the error a cell raised, if it raised one."""
    for out in (cell or {}).get("outputs", []):
        if out.get("output_type") == "error":
            return str(out.get("ename"))
    return None


def _answer_of(cells: list, index: int) -> int | None:
    """The answer cell a test cell checks: the last answer cell before it."""
    for i in range(index - 1, -1, -1):
        if _meta(cells[i]).get("solution"):
            return i
    return None


def explain(nb: NotebookNode, recorded: dict, events: list[str]) -> list[Lost]:
    """Every graded cell with its points and, if points were lost, the reason in words."""
    stopped = {int(m[1]): _EVENT_CELL.sub(lambda _: _cell_name(nb.cells, int(m[1])), e)
               for e in events if (m := _EVENT_CELL.search(e))}
    exercises = []
    for index, cell in enumerate(nb.cells):
        meta = _meta(cell)
        if not meta.get("grade"):
            continue
        gid = meta.get("grade_id", f"cell {index + 1}")
        score, max_score, reason = (recorded.get(gid) or [0, meta.get("points", 0), ""])[:3]
        if score is None:
            exercises.append(Lost(gid, None, max_score, "written answer: a person grades it"))
            continue
        if score < max_score:
            reason = _word(cell, index, nb.cells, str(reason), stopped)
        exercises.append(Lost(gid, score, max_score, reason if score < max_score else ""))
    return exercises


def _cell_name(cells: list, index: int) -> str:
    """'cell 'grad_cam_map'' for an nbgrader cell, 'code cell 22' for another."""
    gid = _meta(cells[index]).get("grade_id") if 0 <= index < len(cells) else None
    return f"cell '{gid}'" if gid else f"code cell {index + 1}"


def _word(cell, index: int, cells: list, reason: str, stopped: dict[int, str]) -> str:
    """Put a lost point's recorded reason in words a student understands."""
    answer = _answer_of(cells, index)
    if index in stopped:
        return f"this cell was stopped: {stopped[index]}"
    if answer in stopped:
        return f"the answer cell was stopped ({stopped[answer]}), so its test could not pass"
    if _meta(cell).get("solution"):
        return "no answer" if reason in ("", "no answer") else reason
    ename = _error(cells[answer]) if answer is not None else None
    if reason.startswith("NotImplementedError") or ename == "NotImplementedError":
        return "no answer yet: the answer cell still raises NotImplementedError"
    if ename:
        return f"the answer cell raised {ename}, so its test failed ({reason})"
    hidden_from, line = _hidden_from(cell.source), _failed_line(cell)
    which = "a hidden test" if hidden_from and line and line >= hidden_from else "a visible test"
    return f"{which} failed: {reason or 'no message'}"


def _summary(page: Page) -> str:
    """The block at the top of the page: status, total, one row per exercise, the notes."""
    rows = "".join(
        f"<tr class='{'lost' if e in page.lost else 'kept'}'><td>{html.escape(e.grade_id)}</td>"
        f"<td>{'–' if e.score is None else f'{e.score:g}'} / {e.max_score:g}</td>"
        f"<td class='reason'>{html.escape(e.reason) or 'all points'}</td></tr>" for e in page.exercises)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in page.notes)
    total = f"– / {page.max_score:g}" if page.status == NOT_GRADED else f"{page.score:g} / {page.max_score:g}"
    return (
        "<section id='course-summary' style='font-family:sans-serif;max-width:60em;margin:1em auto;padding:1em;"
        "border:2px solid #888;border-radius:6px;background:#fafafa'>"
        f"<h2 style='margin-top:0'>{html.escape(page.lesson)} — {html.escape(page.student_id)}: "
        f"{total} ({html.escape(page.status)})</h2>"
        + (f"<table style='border-collapse:collapse;width:100%'><tr><th align=left>exercise</th>"
           f"<th align=left>points</th><th align=left>why points were lost</th></tr>{rows}</table>" if rows else "")
        + (f"<h3>What happened to the notebook</h3><ul>{notes}</ul>" if notes else "")
        + "<style>#course-summary td{border-top:1px solid #ccc;padding:.3em .6em}"
          "#course-summary td:nth-child(2){white-space:nowrap}#course-summary tr.lost td{background:#fde8e8}</style></section>")


def _render(course: Course, lesson: str, student: str, notebook: str, nb: NotebookNode) -> str:
    """nbgrader's feedback page for one notebook (its GetGrades preprocessor and feedback template)."""
    import nbgrader
    from nbconvert.exporters import HTMLExporter
    from nbgrader.preprocessors import GetGrades
    from traitlets.config import Config
    base = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader"
    config = Config()
    config.HTMLExporter.template_name = "feedback"
    config.HTMLExporter.extra_template_basedirs = [str(base / "templates")]
    config.HTMLExporter.extra_template_paths = [str(base / "static" / "node_modules" / "bootstrap" / "dist" / "css")]
    resources = {"nbgrader": {"db_url": course.db_url, "assignment": lesson, "notebook": notebook,
                              "student": student}}
    nb, resources = GetGrades().preprocess(nb, resources)
    body, _ = HTMLExporter(config=config).from_notebook_node(nb, resources=resources)
    return body


def _page_html(page: Page, body: str | None) -> str:
    summary = _summary(page)
    if body is None:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(page.lesson)} feedback"
                f"</title></head><body>{summary}</body></html>")
    m = re.search(r"<body[^>]*>", body)
    return body[: m.end()] + summary + body[m.end():] if m else summary + body


def _notes(o: Outcome) -> list[str]:
    """What happened to the submission as a whole, from its `outcome` (not graded: why, and nothing else)."""
    notes = []
    for reason in o.reasons:
        notes.append(reason if not reason.startswith("no notebook") else f"{reason}: every exercise scores 0")
    if o.status == "flagged":
        notes.append("flagged for review: a person will look at the lines named above before the grade is final")
    return notes


def feedback(lesson: str, course_dir: str | os.PathLike = ".", students: list[str] | None = None) -> list[Page]:
    """Write feedback/<student>/<lesson>/<notebook>.html for every student (default: all known)."""
    from .gradebook import everyone
    check_lesson(lesson)
    course = Course.open(course_dir)
    require_gradebook(course, f"course grade {lesson}")
    names = _notebooks(course, lesson)
    decided, config = latest(course, lesson), read_config(course.root)      # read once for the whole class
    return [_student_page(course, lesson, sid, names, decided.get(sid), config)
            for sid in students or everyone(course, lesson)]


def _notebooks(course: Course, lesson: str) -> list[str]:
    from nbgrader.api import MissingEntry
    with course.gradebook() as gb:
        try:
            return sorted(nb.name for nb in gb.find_assignment(lesson).notebooks)
        except MissingEntry:
            raise CourseError(f"'{lesson}' is not in the gradebook: run `course release {lesson}` "
                              f"and `course grade {lesson}` first") from None


def _max_scores(course: Course, lesson: str, notebook: str) -> list[Lost]:
    with course.gradebook() as gb:
        cells = gb.find_notebook(notebook, lesson).grade_cells
        return [Lost(c.name, 0.0, float(c.max_score), "") for c in cells]


def _student_page(course: Course, lesson: str, student: str, names: list[str], decision: Decision | None,
                  config: CourseConfig) -> Page:
    """Write one student's page (one per notebook of the lesson; lessons have one) and describe it.

    The status, score and reasons are `outcome`'s: a submission that is not graded (never reached
    by a run, or handed in again since) gets a page that says so, never its stale autograded notebook.
    """
    o = outcome(course, lesson, student)
    result = o.result                      # None unless the result file is the current grade
    final = final_grade(course, o, decision, config)
    notes = _notes(o) + [n for n in final.notes if not n.startswith("flagged and not reviewed")]
    shown = final.score if final.score is not None else o.score
    max_score = o.max_score if o.max_score is not None else sum(c.max_score for n in names
                                                                for c in _max_scores(course, lesson, n))
    out = course.root / "feedback" / student / lesson
    out.mkdir(parents=True, exist_ok=True)
    page = None
    for name in names:
        graded = course.folder(course.autograded, student, lesson) / f"{name}.ipynb"
        if result and graded.is_file():
            nb = nbformat.read(graded, as_version=4)
            exercises = explain(nb, result.get("cells", {}), result.get("reasons", []))
            notes = [_EVENT_CELL.sub(lambda m: _cell_name(nb.cells, int(m[1])), n) for n in notes]
            body = _render(course, lesson, student, name, hide_tests(nb))
        else:
            unscored = o.status == NOT_GRADED
            why = "not graded yet: see below" if unscored else (notes[0] if notes else o.status)
            exercises = [dataclasses.replace(c, reason=why, score=None if unscored else c.score)
                         for c in _max_scores(course, lesson, name)]
            body = None
        page = Page(student, lesson, out / f"{name}.html", o.status, shown or 0.0, max_score, tuple(exercises),
                    tuple(notes))
        page.path.write_text(_page_html(page, body), encoding="utf-8")
    return page
