"""`course similarity`: pairs of students whose solution code is unusually alike, for a person to review.

Each student's code for a lesson (their answer cells, matched to the release by grade_id or by
position and content, plus the code cells they added) is compared with every other student's and
with known sources: `course_utils`' own files, the course's reference answers (the solution cells of
its source notebooks) and any file the instructor names. The comparison is copydetect's: code is
tokenised with names, strings and comments normalised away, and runs of NOISE filtered characters
are fingerprinted (winnowing, as MOSS does). Whatever the released notebook already contains (stubs,
locked cells) is boilerplate: it matches nothing. The result informs a review; it never changes a grade.
"""
from __future__ import annotations

import dataclasses
import html
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

import nbformat

from . import layout
from .assemble import UnreadableNotebook, find_notebooks, match_cells, read_submission
from .gradebook import Course, CourseError, check_lesson

NOISE = 25               # filtered characters a shared run needs to count (copydetect's default, ~6-8 tokens)
DEFAULT_THRESHOLD = 0.6  # listed when 60% of one side's own code is found in the other (see `similarity`)
STUDENTS, KNOWN = "students", "known"
_MAGIC = re.compile(r"^[ \t]*(%|!)|\?[ \t]*$")


@dataclasses.dataclass(frozen=True)
class Piece:
    """One cell's code inside a compared text: its label and where it sits in the joined text."""
    label: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class Source:
    """A text that is compared: one student's solution code, or a known source file."""
    name: str
    kind: str            # STUDENTS for a student, KNOWN for course_utils, reference answers, --known files
    text: str
    pieces: tuple[Piece, ...]


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two compared texts: the share of each side's own code found in the other, and where it is."""
    left: str
    right: str
    kind: str                                      # STUDENTS (both students) or KNOWN (left student, right source)
    left_share: float
    right_share: float
    tokens: int                                    # matched filtered characters, on the left side
    left_spans: tuple[tuple[int, int], ...]
    right_spans: tuple[tuple[int, int], ...]

    @property
    def score(self) -> float:
        """What ranks and flags the pair: the larger share between students; the student's share against a source."""
        return max(self.left_share, self.right_share) if self.kind == STUDENTS else self.left_share


@dataclasses.dataclass
class SimilarityReport:
    """The structured result of `similarity`: who was compared, who could not be, and every pair that shares code."""
    lesson: str
    threshold: float
    students: list[str]                            # compared (handed in code of their own)
    template_only: list[str]                       # handed in, but nothing beyond the released template
    skipped: dict[str, str]                        # student id -> why they were not compared
    known: list[str]                               # names of the known sources
    pairs: list[Pair]                              # every pair with a match, highest score first
    sources: dict[str, Source]
    html_path: Path | None = None

    def flagged(self, kind: str | None = None) -> list[Pair]:
        """Pairs at or above the threshold (of one kind, if given), highest first."""
        return [p for p in self.pairs if p.score >= self.threshold and kind in (None, p.kind)]

    def table(self) -> str:
        """The printed summary: flagged pairs with both shares and matched tokens, then who was left out."""
        lines = [f"{self.lesson}: {len(self.students)} students compared with each other and with "
                 f"{len(self.known)} known sources; pairs at or above {self.threshold:.0%}:"]
        for kind, title in ((STUDENTS, "student pairs"), (KNOWN, "against known sources")):
            rows = self.flagged(kind)
            lines.append(f"  {title}: {len(rows) or 'none'}")
            lines += [f"    {p.left:<16} {p.right:<40} {p.left_share:4.0%} / {p.right_share:4.0%}  "
                      f"{p.tokens:>5} tokens" for p in rows]
        below = [p for p in self.pairs if p.score < self.threshold]
        if below:
            lines.append(f"  highest below the threshold: {below[0].left} / {below[0].right} {below[0].score:.0%}")
        lines += [f"  only the template: {', '.join(self.template_only)}"] if self.template_only else []
        lines += [f"  not compared: {sid}: {why}" for sid, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def similarity(lesson: str, course_dir: str | os.PathLike = ".", threshold: float = DEFAULT_THRESHOLD,
               known: Iterable[str | os.PathLike] = (), write_html: bool = True) -> SimilarityReport:
    """Compare every student's solution code for `lesson` with each other's and with known sources.

    A pair is flagged when its score (the larger of the two shares of own code found in the other side;
    against a known source, the student's share) reaches `threshold`. The default, 0.6: honest answers
    to a lesson's short exercises share idioms (`register_forward_hook`, `detach().clone()`,
    `try/finally`), up to about half of the shorter answer in the tests' hand-written class, while a
    copy with renamed names and rewritten comments shares nearly all of it.
    Writes `<course>/similarity/<lesson>.html` (self-contained) unless `write_html` is False.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"--threshold must be a share between 0 and 1 (e.g. 0.5 for 50%), not {threshold}")
    course = Course.open(course_dir)
    releases = _released(course, check_lesson(lesson))
    known = [known] if isinstance(known, (str, os.PathLike)) else known
    known_sources = _known_sources(course, [Path(p) for p in known])
    students, template_only, skipped = _students(course, lesson, releases)
    pairs = _compare(list(students.values()), known_sources, _boilerplate(releases.values()))
    report = SimilarityReport(lesson, threshold, sorted(students), template_only, skipped,
                              [s.name for s in known_sources], pairs,
                              {s.name: s for s in [*students.values(), *known_sources]})
    if write_html:
        report.html_path = _write_atomic(course.root / "similarity" / f"{lesson}.html", report_html(report))
    return report


def _released(course: Course, lesson: str) -> dict[str, nbformat.NotebookNode]:
    """The lesson's released notebooks by name, or a CourseError naming the fix."""
    from .release import lessons
    known = lessons(course)
    if lesson not in known:
        raise CourseError(f"no lesson '{lesson}' in {course.root / course.source}; "
                          f"choose from {', '.join(known) or '(none)'}")
    folder = course.root / course.release / lesson
    paths = sorted(folder.glob("*.ipynb"))
    if not paths:
        raise CourseError(f"{lesson} is not released ({folder} has no notebook): run `course release {lesson}` first")
    return {p.stem: nbformat.read(p, as_version=4) for p in paths}


def _students(course: Course, lesson: str, releases: dict[str, nbformat.NotebookNode]
              ) -> tuple[dict[str, Source], list[str], dict[str, str]]:
    """Each student's code; who handed in only the template; who could not be read, and why."""
    templates = {name: template_code(nb) for name, nb in releases.items()}
    students, template_only, skipped = {}, [], {}
    for sid, folder in course.submissions(lesson).items():
        try:
            source = student_source(sid, folder, releases, templates)
        except (UnreadableNotebook, OSError) as e:      # costs this student only
            skipped[sid] = str(e)
            continue
        if source is None:
            skipped[sid] = "nothing handed in"
        elif not source.pieces:
            template_only.append(sid)
        else:
            students[sid] = source
    return students, template_only, skipped


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def plain_python(code: str) -> str:
    """Code with IPython magics, shell escapes and help lines commented out, so Python's tokenizer copes."""
    return "\n".join(f"# {line}" if _MAGIC.search(line) else line for line in code.splitlines())


def _filtered(code: str) -> str:
    """What copydetect compares: the code with names, strings, comments and spacing normalised."""
    from copydetect.utils import filter_code
    return filter_code(plain_python(code), "code.py", "python")[0]


def template_code(release: nbformat.NotebookNode) -> set[str]:
    """The release's code cells as copydetect sees them: a student cell equal to one of them is not their own."""
    return {_filtered(c.source) for c in release.cells if c.cell_type == "code"}


def student_code(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode,
                 template: set[str] | None = None) -> list[tuple[str, str]]:
    """(label, code) of a student's own code: answer cells that differ from the stub, and code cells they added."""
    matched = match_cells(release.cells, submitted.cells)
    template = template_code(release) if template is None else template
    pieces = []
    for i, cell in enumerate(release.cells):
        j = matched.get(i)
        if cell.cell_type == "code" and _meta(cell).get("solution") and j is not None:
            pieces.append((j, _meta(cell).get("grade_id", f"cell {i + 1}"), submitted.cells[j].source))
    added = set(range(len(submitted.cells))) - set(matched.values())
    pieces += [(j, f"added cell {j + 1}", submitted.cells[j].source) for j in added
               if submitted.cells[j].cell_type == "code"]
    return [(label, code) for _, label, code in sorted(pieces)
            if isinstance(code, str) and _filtered(code) not in template]


def _joined(name: str, kind: str, pieces: list[tuple[str, str]]) -> Source:
    """One text of several pieces, a blank line between them, remembering where each piece is."""
    text, spans = "", []
    for label, code in pieces:
        code = plain_python(code).rstrip() + "\n"
        spans.append(Piece(label, len(text), len(text) + len(code)))
        text += code + "\n"
    return Source(name, kind, text, tuple(spans))


def student_source(student: str, folder: Path, releases: dict[str, nbformat.NotebookNode],
                   templates: dict[str, set[str]] | None = None) -> Source | None:
    """A student's solution code for the lesson (None when nothing is handed in); UnreadableNotebook if unreadable."""
    if not folder.is_dir():
        return None
    found, _ = find_notebooks(folder, list(releases))
    if not found:
        return None
    templates = templates or {name: template_code(nb) for name, nb in releases.items()}
    pieces = []
    for name, path in found.items():
        prefix = f"{name}: " if len(releases) > 1 else ""
        typed = student_code(read_submission(path), releases[name], templates[name])
        pieces += [(prefix + label, code) for label, code in typed]
    return _joined(student, STUDENTS, pieces)


def _known_sources(course: Course, extra: list[Path]) -> list[Source]:
    """course_utils' files, the course's reference answers (every lesson) and the instructor's own files."""
    bad = [p for p in extra if not p.is_file() or p.suffix not in (".py", ".ipynb")]
    if bad:
        raise ValueError(f"--known takes existing .py or .ipynb files; not usable: {', '.join(map(str, bad))}")
    sources = [_joined(f"course_utils/{p.name}", KNOWN, [(p.name, p.read_text(encoding="utf-8"))])
               for p in sorted(layout.COURSE_UTILS.glob("*.py"))]
    for path in sorted((course.root / course.source).glob("*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        answers = [(_meta(c).get("grade_id", ""), c.source) for c in nb.cells
                   if c.cell_type == "code" and _meta(c).get("solution")]
        if answers:
            sources.append(_joined(f"{course.source}/{path.parent.name}/{path.name}", KNOWN, answers))
    for path in extra:
        sources.append(_joined(str(path), KNOWN, _file_pieces(path)))
    return sources


def _file_pieces(path: Path) -> list[tuple[str, str]]:
    """A known file as pieces: a .py file whole, a notebook's code cells one by one."""
    if path.suffix == ".py":
        return [(path.name, path.read_text(encoding="utf-8"))]
    try:
        nb = read_submission(path)
    except UnreadableNotebook as e:
        raise ValueError(f"--known {path}: {e}") from None
    return [(f"cell {i + 1}", c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _boilerplate(releases: Iterable[nbformat.NotebookNode]):
    """Fingerprints of every code cell of the release: code that is there for everyone matches nothing."""
    import numpy as np
    from copydetect import CodeFingerprint
    hashes = [h for nb in releases for c in nb.cells if c.cell_type == "code"
              for h in CodeFingerprint("release.py", NOISE, 1, language="python",
                                       fp=io.StringIO(plain_python(c.source))).hashes]
    return np.unique(np.array(hashes, dtype=np.int64))


def _compare(students: list[Source], known: list[Source], boilerplate) -> list[Pair]:
    """Every student pair and every student-source pair that shares code, highest score first."""
    from copydetect import CodeFingerprint
    prints = {s.name: CodeFingerprint(s.name, NOISE, 1, boilerplate=boilerplate, language="python",
                                      fp=io.StringIO(s.text)) for s in [*students, *known]}
    pairs = [_pair(a, b, STUDENTS, prints) for i, a in enumerate(students) for b in students[i + 1:]]
    pairs += [_pair(a, b, KNOWN, prints) for a in students for b in known]
    return sorted((p for p in pairs if p.tokens), key=lambda p: (-p.score, -p.tokens, p.left, p.right))


def _pair(a: Source, b: Source, kind: str, prints: dict) -> Pair:
    from copydetect import compare_files
    tokens, (share_a, share_b), (spans_a, spans_b) = compare_files(prints[a.name], prints[b.name])
    return Pair(a.name, b.name, kind, float(share_a), float(share_b), int(tokens),
                _spans(spans_a), _spans(spans_b))


def _spans(slices) -> tuple[tuple[int, int], ...]:
    """copydetect's 2×N array of (start, end) positions as pairs of ints."""
    return tuple((int(s), int(e)) for s, e in zip(*slices)) if len(slices) and len(slices[0]) else ()


# --- the HTML page -------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}
.sides{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:1em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
mark{background:#ffd27a}h4{margin:.6em 0 .2em}section{margin-bottom:2.5em}.note{color:#666}"""


def report_html(report: SimilarityReport) -> str:
    """The review page: a summary table, then each flagged pair with the shared code highlighted side by side."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Similarity: {esc(report.lesson)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Similarity of solutions: {esc(report.lesson)}</h1>",
             f"<p class='note'>{len(report.students)} students compared with each other and with "
             f"{len(report.known)} known sources. A share is the part of one side's own code (the released "
             f"template set aside, names and comments normalised) found in the other. Listed: pairs at or above "
             f"{report.threshold:.0%}. This page informs a review; it changes no grade.</p>"]
    for kind, title in ((STUDENTS, "Student pairs"), (KNOWN, "Against known sources")):
        rows = report.flagged(kind)
        parts.append(f"<h2>{title}</h2>")
        if not rows:
            parts.append("<p>None.</p>")
            continue
        parts.append("<table><tr><th>pair</th><th>left's code found in right</th>"
                     "<th>right's code found in left</th><th>tokens</th></tr>"
                     + "".join(f"<tr><td><a href='#{_anchor(p)}'>{esc(p.left)} / {esc(p.right)}</a></td>"
                               f"<td>{p.left_share:.0%}</td><td>{p.right_share:.0%}</td><td>{p.tokens}</td></tr>"
                               for p in rows) + "</table>")
        parts += [_pair_html(report, p) for p in rows]
    others = [f"<li>{esc(sid)}: only the released template</li>" for sid in report.template_only]
    others += [f"<li>{esc(sid)}: {esc(why)}</li>" for sid, why in sorted(report.skipped.items())]
    if others:
        parts.append(f"<h2>Not compared</h2><ul>{''.join(others)}</ul>")
    return "".join(parts) + "</body></html>\n"


def _anchor(pair: Pair) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{pair.kind}-{pair.left}-{pair.right}")


def _pair_html(report: SimilarityReport, pair: Pair) -> str:
    left, right = report.sources[pair.left], report.sources[pair.right]
    return (f"<section id='{_anchor(pair)}'><h3>{html.escape(pair.left)} / {html.escape(pair.right)}: "
            f"{pair.left_share:.0%} / {pair.right_share:.0%}, {pair.tokens} tokens</h3><div class='sides'>"
            f"<div>{_code_html(left, pair.left_spans)}</div><div>{_code_html(right, pair.right_spans)}</div>"
            "</div></section>")


def _code_html(source: Source, spans: tuple[tuple[int, int], ...]) -> str:
    """Each piece of a source with the shared runs marked; a long known file shows only what is near a match."""
    import numpy as np
    from copydetect.utils import highlight_overlap
    out = []
    for piece in source.pieces:
        inside = [(max(s, piece.start) - piece.start, min(e, piece.end) - piece.start)
                  for s, e in spans if s < piece.end and e > piece.start]
        code = source.text[piece.start:piece.end]
        if not inside:
            if source.kind == KNOWN:
                continue
            marked = html.escape(code)
        else:
            marked, _ = highlight_overlap(code, np.array(inside).T, "<mark>", "</mark>",
                                          truncate=4 if source.kind == KNOWN else -1, escape_html=True)
        out.append(f"<h4>{html.escape(piece.label)}</h4><pre>{marked}</pre>")
    return "".join(out)


def _write_atomic(path: Path, text: str) -> Path:
    """Write a file whole or not at all (a temporary file beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
