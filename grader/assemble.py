"""Re-assemble a submission before it runs: the instructor's notebook with the student's answers in it.

Locked and test cells always come from the gradebook (hidden tests included), so a student who
edits or deletes a test changes nothing. Answers are found by nbgrader `grade_id`; when an editor
stripped the metadata, by position and content against the released notebook. Cells the student
added stay where they were. Every repair is returned as a reason in plain words.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import uuid
from pathlib import Path

import nbformat
from nbformat import NotebookNode


@dataclasses.dataclass(frozen=True)
class InstructorCell:
    """What the gradebook knows of one nbgrader cell of the assignment."""
    grade_id: str
    cell_type: str
    source: str          # instructor's source (hidden tests included) for locked and test cells
    locked: bool


@dataclasses.dataclass
class Assembled:
    """The notebook to run, which of its cells the student wrote, and what was repaired."""
    notebook: NotebookNode
    student_cells: list[int]                      # indices of cells whose code came from the student
    repairs: list[str]


class UnreadableNotebook(ValueError):
    """The submitted file is not a notebook nbformat can read; the message says why."""


def read_submission(path: Path) -> NotebookNode:
    """Read a submitted notebook, or raise UnreadableNotebook with a reason a person understands."""
    data = path.read_bytes()
    if not data.strip():
        raise UnreadableNotebook(f"{path.name} is empty")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableNotebook(f"{path.name} is not valid notebook JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise UnreadableNotebook(f"{path.name} is JSON but not a notebook (no list of cells)")
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as e:  # nbformat raises several kinds for malformed notebooks
        raise UnreadableNotebook(f"{path.name} could not be read as a notebook ({e})") from None
    for cell in nb.cells:
        if not isinstance(cell.get("source", ""), str) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise UnreadableNotebook(f"{path.name} has a malformed cell")
    return nb


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


SIMILAR = 0.5        # a changed test or locked cell still counts as that cell above this similarity


def _key(cell) -> tuple[str, str]:
    return cell.cell_type, cell.source.strip()


def match_cells(release: list, student: list) -> dict[int, int]:
    """release index -> student index: by grade_id first, then by position and content."""
    matched: dict[int, int] = {}
    by_id: dict[str, int] = {}
    for j, cell in enumerate(student):
        gid = _meta(cell).get("grade_id")
        if isinstance(gid, str) and gid not in by_id:
            by_id[gid] = j
    for i, cell in enumerate(release):
        gid = _meta(cell).get("grade_id")
        if gid in by_id:
            matched[i] = by_id[gid]
    rest_r = [i for i in range(len(release)) if i not in matched]
    rest_s = [j for j in range(len(student)) if j not in matched.values()]
    ops = difflib.SequenceMatcher(None, [_key(release[i]) for i in rest_r], [_key(student[j]) for j in rest_s],
                                  autojunk=False).get_opcodes()
    for tag, r0, r1, s0, s1 in ops:
        if tag == "equal":
            matched.update({rest_r[r0 + k]: rest_s[s0 + k] for k in range(r1 - r0)})
        elif tag == "replace":
            _pair_changed(release, student, rest_r[r0:r1], rest_s[s0:s1], matched)
    return matched


def _pair_changed(release: list, student: list, rs: list[int], ss: list[int], matched: dict[int, int]) -> None:
    """Inside a stretch that differs: given cells (tests, locked, prose) go to their most similar
    student cell, then answer cells take the remaining cells of their type in order."""
    free = list(ss)
    for i in rs:
        if _meta(release[i]).get("solution"):
            continue
        scored = [(difflib.SequenceMatcher(None, release[i].source, student[j].source, autojunk=False).ratio(), j)
                  for j in free if student[j].cell_type == release[i].cell_type]
        if scored and max(scored)[0] >= SIMILAR:
            matched[i] = max(scored)[1]
            free.remove(matched[i])
    for i in rs:
        if _meta(release[i]).get("solution"):
            same = [j for j in free if student[j].cell_type == release[i].cell_type]
            if same:
                matched[i] = same[0]
                free.remove(same[0])


def assemble(submitted: NotebookNode, release: NotebookNode, instructor: dict[str, InstructorCell]) -> Assembled:
    """The notebook to grade: release order, instructor's locked/test cells, the student's answers."""
    rel, stu = release.cells, submitted.cells
    matched = match_cells(rel, stu)
    inverse = {j: i for i, j in matched.items()}
    repairs: list[str] = []
    stripped = sum(1 for i, j in matched.items() if _meta(rel[i]).get("grade_id") and not _meta(stu[j]))
    if stripped:
        repairs.append(f"nbgrader metadata was missing from {stripped} cell(s); they were matched by position and content")
    added_after: dict[int, list[int]] = {}
    last = -1
    for j in range(len(stu)):
        if j in inverse:
            last = inverse[j]
        else:
            added_after.setdefault(last, []).append(j)
    cells, student_cells = [], []

    def add_student_cell(j: int) -> None:
        cell = nbformat.from_dict(json.loads(json.dumps(stu[j])))
        cell.metadata.pop("nbgrader", None)                # an added cell is never graded
        cell["id"] = uuid.uuid4().hex[:8]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            student_cells.append(len(cells))
        cells.append(cell)

    for j in added_after.get(-1, []):
        add_student_cell(j)
    for i, rcell in enumerate(rel):
        meta = _meta(rcell)
        gid = meta.get("grade_id")
        cell = nbformat.from_dict(json.loads(json.dumps(rcell)))
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        j = matched.get(i)
        if meta.get("solution"):
            if j is None:
                repairs.append(f"answer cell '{gid}' was not found; it was graded as unanswered")
            else:
                cell.source = stu[j].source
                if cell.cell_type == "code":
                    student_cells.append(len(cells))
        elif meta.get("locked") or meta.get("grade"):
            cell.source = instructor[gid].source if gid in instructor else rcell.source
            if j is None:
                repairs.append(f"{_kind(meta)} '{gid}' was missing; the original was put back")
            elif stu[j].source.strip() not in (rcell.source.strip(), cell.source.strip()):
                repairs.append(f"{_kind(meta)} '{gid}' was edited; the original was put back")
        elif j is not None:                                   # an ordinary cell: the student's version
            cell.source = stu[j].source
            if cell.cell_type == "code" and cell.source.strip() != rcell.source.strip():
                student_cells.append(len(cells))
        elif cell.cell_type == "code":
            repairs.append(f"code cell {i + 1} of the lesson was deleted; it was put back")
        cells.append(cell)
        for jj in added_after.get(i, []):
            add_student_cell(jj)
    nb = nbformat.v4.new_notebook(cells=cells, metadata=json.loads(json.dumps(release.metadata)))
    return Assembled(notebook=nb, student_cells=student_cells, repairs=repairs)


def _kind(meta: dict) -> str:
    return "test cell" if meta.get("grade") else "locked cell"


_COPY = re.compile(r"^(copy of )+|( ?\(\d+\))+$|([-_ ]\d{1,2})+$|[-_ ]?copy\d*$", re.I)


def normalise_name(filename: str) -> str:
    """'Copy of 05_gradcam (1).ipynb' -> '05_gradcam': what browsers, Colab and LMSs add, removed."""
    stem = Path(filename).name
    stem = stem[: -len(".ipynb")] if stem.lower().endswith(".ipynb") else stem
    previous = None
    while previous != stem:
        previous, stem = stem, _COPY.sub("", stem.strip()).strip()
    return stem.lower().replace(" ", "_")


def find_notebooks(folder: Path, expected: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Map each expected notebook name to a submitted file (renames tolerated) and explain choices."""
    files = sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.is_symlink())
    found, notes = {}, []
    for name in expected:
        exact = folder / f"{name}.ipynb"
        if exact in files:
            found[name] = exact
            continue
        similar = [p for p in files if normalise_name(p.name) == name.lower() and p not in found.values()]
        if not similar and len(expected) == 1:
            similar = [p for p in files if p not in found.values()]
        if similar:
            chosen = max(similar, key=lambda p: (p.stat().st_mtime, p.name))
            found[name] = chosen
            notes.append(f"'{chosen.name}' was graded as {name}.ipynb")
            for other in similar:
                if other != chosen:
                    notes.append(f"'{other.name}' was ignored: '{chosen.name}' is newer")
    return found, notes
