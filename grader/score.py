"""Score a run with nbgrader's own rule, and say in words why each lost point was lost.

The executed notebook is rebuilt here, in the grader, from the assembled notebook (trusted: its
sources and nbgrader metadata) and the outputs the sandbox reported (untrusted: only outputs are
taken from it), then scored by `nbgrader.utils.determine_grade`, exactly as nbgrader would.
"""
from __future__ import annotations

import copy
import dataclasses

from nbformat import NotebookNode
from nbgrader.utils import determine_grade, is_grade, is_solution

from .execute import NotebookRun

_OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}


def _clean_output(out) -> dict | None:
    """Keep only well-formed nbformat outputs (the sandbox could send anything)."""
    if not isinstance(out, dict) or out.get("output_type") not in _OUTPUT_TYPES:
        return None
    kind = out["output_type"]
    if kind == "stream":
        text = out.get("text", "")
        text = "".join(map(str, text)) if isinstance(text, list) else str(text)
        return {"output_type": "stream", "name": "stderr" if out.get("name") == "stderr" else "stdout", "text": text}
    if kind == "error":
        tb = out.get("traceback", [])
        return {"output_type": "error", "ename": str(out.get("ename", "Error")), "evalue": str(out.get("evalue", "")),
                "traceback": [str(t) for t in tb] if isinstance(tb, list) else [str(tb)]}
    data = out.get("data") if isinstance(out.get("data"), dict) else {}
    data = {str(k): ("".join(map(str, v)) if isinstance(v, list) else v) for k, v in data.items()
            if isinstance(v, (str, list))}
    cleaned = {"output_type": kind, "data": data, "metadata": out.get("metadata") if isinstance(out.get("metadata"), dict) else {}}
    if kind == "execute_result":
        cleaned["execution_count"] = None
    return cleaned


def executed(assembled: NotebookNode, run: NotebookRun) -> NotebookNode:
    """The assembled notebook with the run's outputs attached to its code cells."""
    import nbformat
    nb = copy.deepcopy(assembled)
    count = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = [o for o in map(_clean_output, run.outputs.get(index, [])) if o is not None]
        count += 1
        cell.execution_count = count
        for o in outputs:
            if o["output_type"] == "execute_result":
                o["execution_count"] = count
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return nb


@dataclasses.dataclass(frozen=True)
class CellScore:
    """One graded cell: its points and, when some were lost, why."""
    grade_id: str
    score: float | None          # None: needs a person (a written answer)
    max_score: float
    reason: str = ""


def score_cells(nb: NotebookNode) -> list[CellScore]:
    """nbgrader's score of every graded cell, with the reason for each lost point."""
    scores = []
    for cell in nb.cells:
        if not is_grade(cell):
            continue
        score, max_score = determine_grade(cell)
        reason = ""
        if score is None:
            reason = "written answer: graded by a person"
        elif score < max_score:
            reason = "no answer" if is_solution(cell) else why_failed(cell)
        scores.append(CellScore(cell.metadata.nbgrader["grade_id"], score, max_score, reason))
    return scores


def why_failed(cell: NotebookNode) -> str:
    """The reason a test cell scored 0: the error's type and message, or the stderr it wrote."""
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            message = str(out.get("evalue", "")).strip().splitlines()
            text = f"{out.get('ename', 'Error')}: {message[0] if message else ''}".strip().rstrip(":")
            return text[:500]
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.name == "stderr":
            first = str(out.text).strip().splitlines()
            return f"the test wrote to stderr: {first[0][:300] if first else ''}"
    return "partial credit"
