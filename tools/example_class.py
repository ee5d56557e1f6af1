"""Generate examples/class/: a fictional class of twelve and what an LMS hands the instructor.

    PYTHONPATH=. python tools/example_class.py            # rewrite examples/class/ from the lessons
    PYTHONPATH=. python tools/example_class.py --check    # exit 1 if examples/class/ is out of date

`roster.csv` is nbgrader's student list. `01_setup.zip` is a Canvas bulk download
(`lastnamefirstname_userid_submissionid_file`, `_LATE_`, `-1` for a second upload) and
`05_gradcam.zip` a Moodle one (`Full Name_userid_assignsubmission_file_/file`), with a zip inside it.
Every notebook is built from the released lesson by tools/classroom.py, so the class stays in step
with the lessons; entries are sorted and carry fixed times, so the zips are the same byte for byte on
every run (tests/test_example_class.py checks it). PLANS says what each student hands in; the correct
answers are hand-written in several styles (STYLES, HANDS), so that `course similarity` finds only the planted
copy (jnovak's 01_setup, aokafor's renamed) and the pasted course code (cwei's 05_gradcam). `course.toml` has
the due dates (lfischer's 01_setup is late; dvolkov's 05_gradcam is late but within his extension) and
`canvas_gradebook.csv` is the class's Canvas gradebook export, to fill with `course export --canvas`.
"""
from __future__ import annotations

import ast
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
    "cwei": {"01_setup": "partly", "05_gradcam": "pasted"},
    "dvolkov": {"01_setup": "blank", "05_gradcam": "partly"},
    "egarcia": {"01_setup": "renamed", "05_gradcam": "renamed"},
    "fhaddad": {"01_setup": "stripped", "05_gradcam": "stripped"},
    "gsantos": {"01_setup": "duplicate", "05_gradcam": "correct"},
    "hsato": {},
    "ipetrov": {"01_setup": "writer", "05_gradcam": "correct"},
    "jnovak": {"01_setup": "copied", "05_gradcam": "loop"},
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

# When a hand-in is not the day's usual one: (student, lesson) -> (day of November 2026, hour, UTC). lfischer's
# 01_setup is after its due date (course.toml), dvolkov's 05_gradcam after its due date but within his extension.
HANDED_IN = {("lfischer", "01_setup"): (28, 20), ("dvolkov", "05_gradcam"): (25, 10)}


# Hand-written correct answers, several honest styles per exercise (names, loops or comprehensions, comments
# differ), so that in `course similarity` only the planted copies look alike. Every style earns full points.
STYLES = {
    "01_setup": {
        "is_cat": (
            "def is_cat(name):\n    return name[0].isupper()\n",
            "def is_cat(filename):\n    # Pets: cat breeds are capitalised, dog breeds are not\n"
            "    first_letter = filename[:1]\n    return first_letter.isupper()\n",
            "import string\n\ndef is_cat(fname):\n    return fname[0] in string.ascii_uppercase\n",
            "def is_cat(name):\n    if name[0] == name[0].upper() and name[0].isalpha():\n        return True\n"
            "    return False\n",
        ),
        "cat_index": (
            "cat_index = list(dls.vocab).index(True)\n",
            "cat_index = [i for i, label in enumerate(dls.vocab) if label][0]\n",
            "# the vocab is [False, True]: find where True sits\nfor position, is_a_cat in enumerate(dls.vocab):\n"
            "    if is_a_cat == True:\n        cat_index = position\n",
            "cat_index = dls.vocab.o2i[True]\n",
        ),
        "as_batch": (
            "def as_batch(dls, img):\n    x, = first(dls.test_dl([img]))\n    return x\n",
            "def as_batch(dls, img):\n    batch = dls.test_dl([img]).one_batch()\n    return batch[0]\n",
            "def as_batch(dls, img):\n    # a test DataLoader of one image gives one batch with one tensor in it\n"
            "    for (xb,) in dls.test_dl([img]):\n        return xb\n",
            "def as_batch(dls, image):\n    return next(iter(dls.test_dl([image])))[0]\n",
        ),
        "prob_cat": (
            "def prob_cat(model, x):\n    with torch.no_grad():\n"
            "        return F.softmax(model.eval()(x), dim=-1)[:, cat_index]\n",
            "def prob_cat(model, x):\n    model.eval()\n    with torch.no_grad():\n        logits = model(x)\n"
            "    probs = logits.softmax(dim=1)\n    return probs[:, cat_index]\n",
            "def prob_cat(model, x):\n    was_training = model.training\n    model.eval()\n    try:\n"
            "        with torch.no_grad():\n            p = F.softmax(model(x), dim=1)\n    finally:\n"
            "        model.train(was_training)     # leave the model as we found it\n    return p[:, cat_index]\n",
            "def prob_cat(net, xb):\n    net = net.eval()\n    with torch.no_grad():\n        e = torch.exp(net(xb))\n"
            "    return (e / e.sum(dim=1, keepdim=True))[:, cat_index]\n",
        ),
    },
    "05_gradcam": {
        "target_score": (
            "def target_score(output, targets):\n"
            "    return output[torch.arange(len(targets)), torch.as_tensor(list(targets))].sum()\n",
            "def target_score(output, targets):\n    total = 0\n    for row, t in enumerate(targets):\n"
            "        total = total + output[row, t]\n    return total\n",
            "def target_score(scores, targets):\n    # one column per row, picked with gather\n"
            "    idx = torch.tensor(list(targets)).view(-1, 1)\n    return scores.gather(1, idx).sum()\n",
            "def target_score(output, targets):\n    onehot = F.one_hot(torch.as_tensor(list(targets)), output.shape[1])\n"
            "    return (output * onehot.to(output.dtype)).sum()\n",
        ),
        "HookBwd": (
            "class HookBwd:\n    \"\"\"Gradient at a module's output, caught by a tensor hook set in the forward pass.\"\"\"\n"
            "    stored = None\n\n    def __init__(self, m):\n        self._handle = m.register_forward_hook(self._forward)\n"
            "        self._done = False\n\n    def _forward(self, mod, inp, out):\n        if not out.requires_grad:\n"
            "            return                      # nothing to catch under no_grad\n"
            "        out.register_hook(self._backward)\n\n    def _backward(self, grad):\n"
            "        self.stored = grad.detach().clone()\n\n    def __enter__(self):\n        return self\n\n"
            "    def __exit__(self, *exc_info):\n        if not self._done:\n            self._handle.remove()\n"
            "            self._done = True\n",
            "class HookBwd:\n    \"\"\"Keeps the gradient at module m's output in .stored.\"\"\"\n"
            "    def __init__(self, m):\n        self.stored, self.handle = None, m.register_forward_hook(self._on_forward)\n\n"
            "    def _on_forward(self, module, inputs, output):\n        # only when autograd records this pass\n"
            "        if output.requires_grad:\n"
            "            output.register_hook(lambda g: setattr(self, 'stored', g.detach().clone()))\n\n"
            "    def remove(self):\n        if self.handle is not None:\n            self.handle.remove()\n"
            "            self.handle = None\n\n    def __enter__(self):\n        return self\n\n"
            "    def __exit__(self, exc_type, exc, tb):\n        self.remove()\n        return False\n",
            "class HookBwd:\n    def __init__(self, m):\n        self.stored = None\n"
            "        self.handles = [m.register_forward_hook(self.forward_hook)]\n\n"
            "    def forward_hook(self, module, args, out):\n        if torch.is_grad_enabled() and out.requires_grad:\n"
            "            out.register_hook(self.save_grad)\n\n    def save_grad(self, g):\n"
            "        self.stored = g.clone().detach()\n\n    def __enter__(self):\n        return self\n\n"
            "    def __exit__(self, *exc):\n        while self.handles:\n            self.handles.pop().remove()\n",
            "class HookBwd:\n    def __init__(self, m):\n        self.stored = None\n\n"
            "        def on_output(module, inp, out):\n            if out.requires_grad:\n"
            "                def keep(g):\n                    self.stored = g.detach().clone()\n"
            "                out.register_hook(keep)\n\n        self.h = m.register_forward_hook(on_output)\n\n"
            "    def remove(self):\n        self.h.remove()\n\n    def __enter__(self):\n        return self\n\n"
            "    def __exit__(self, *a):\n        self.remove()\n",
        ),
        "grad_cam_map": (
            "def grad_cam_map(act, grad):\n    w = grad.mean(dim=[1, 2], keepdim=True)\n    return (w * act).sum(0)\n",
            "def grad_cam_map(act, grad):\n    weights = grad.mean((1, 2))\n"
            "    return torch.einsum('k,khw->hw', weights, act)\n",
            "def grad_cam_map(acts, grads):\n    # one weight per channel: the average gradient over the grid\n"
            "    alpha = grads.flatten(1).mean(-1)\n    return (alpha[:, None, None] * acts).sum(dim=0)\n",
            "def grad_cam_map(act, grad):\n    n_channels = act.shape[0]\n"
            "    weights = grad.reshape(n_channels, -1).mean(dim=1)\n    heat = torch.zeros_like(act[0])\n"
            "    for k in range(n_channels):\n        heat += weights[k] * act[k]\n    return heat\n",
        ),
        "gradcam_matches_cam": (
            "def gradcam_matches_cam(model, x, layer, targets):\n"
            "    g = gradcam(model, x, layer, targets, relu=False)\n    c = cam(model, x, targets)\n"
            "    if g.shape != c.shape:\n        return False\n    h, w = c.shape[-2:]\n"
            "    return bool(torch.allclose(g, c / (h * w), atol=1e-5))\n",
            "def gradcam_matches_cam(model, x, layer, targets):\n"
            "    grad_map = gradcam(model, x, layer, targets, relu=False)\n    cam_map = cam(model, x, targets)\n"
            "    if grad_map.shape != cam_map.shape:\n        return False          # another grid: another layer\n"
            "    scaled = cam_map / cam_map[0].numel()\n    return (grad_map - scaled).abs().max().item() < 1e-4\n",
            "def gradcam_matches_cam(net, xb, layer, targets):\n    maps = [gradcam(net, xb, layer, targets, relu=False),\n"
            "            cam(net, xb, targets)]\n    same_grid = maps[0].shape == maps[1].shape\n"
            "    return same_grid and torch.allclose(maps[0] * maps[1].shape[-1] * maps[1].shape[-2], maps[1], atol=1e-4)\n",
            "def gradcam_matches_cam(model, x, layer, targets):\n    c = cam(model, x, targets)\n"
            "    g = gradcam(model, x, layer, targets, relu=False)\n    ok = g.shape == c.shape\n    if ok:\n"
            "        area = c.shape[1] * c.shape[2]      # CAM sums over the grid, Grad-CAM averages\n"
            "        ok = bool(torch.isclose(g * area, c, atol=1e-3).all())\n    return ok\n",
        ),
    },
}
# Which style of each exercise (in lesson order: a digit per exercise, "-" for none) each student types.
HANDS = {   # each two share at most one style (a code of distance 3 over GF(4): a, b, a+b, a+2b)
    "01_setup": {"aokafor": "1103", "blindqvist": "2313", "cwei": "312-", "egarcia": "0231", "fhaddad": "1232",
                 "gsantos": "2201", "ipetrov": "3210", "kmensah": "011-", "lfischer": "213-", "smithjordan": "0000"},
    "05_gradcam": {"aokafor": "0112", "blindqvist": "022-", "cwei": "1--1", "dvolkov": "132-", "egarcia": "2022",
                   "fhaddad": "2130", "gsantos": "2201", "ipetrov": "3033", "jnovak": "3121", "kmensah": "3210",
                   "lfischer": "1232"},
}


# jnovak's 01_setup: aokafor's answers (HANDS "1103") with every name changed and the comments rewritten.
COPIED = {
    "is_cat": "def is_cat(file_name):\n    # an upper-case first letter means a cat breed\n"
              "    initial = file_name[:1]\n    return initial.isupper()\n",
    "cat_index": "cat_index = [k for k, lab in enumerate(dls.vocab) if lab][0]\n",
    "as_batch": "def as_batch(loaders, picture):\n    batch, = first(loaders.test_dl([picture]))\n    return batch\n",
    "prob_cat": "def prob_cat(m, inputs):\n    m = m.eval()\n    with torch.no_grad():\n        ex = torch.exp(m(inputs))\n"
                "    return (ex / ex.sum(dim=1, keepdim=True))[:, cat_index]     # softmax by hand\n",
}
# cwei's 05_gradcam pastes the course's own code: HookBwd as course_utils/hooks.py has it (with its base class),
# and grad_cam_map on course_utils.cam's helpers, which the reference scan flags for review.
PASTED_CAM = ("from course_utils.cam import gradcam_weights, weighted_sum\n\n"
              "def grad_cam_map(act, grad):\n"
              "    return weighted_sum(gradcam_weights(act[None], grad[None]), act[None], relu=False)[0]\n")


def pasted_hook() -> str:
    """The HookBwd answer a student pasted from course_utils/hooks.py (read from the file: a real paste)."""
    source = (ROOT / "course_utils" / "hooks.py").read_text()
    tree = ast.parse(source)
    pasted = [ast.get_source_segment(source, node) for node in tree.body
              if getattr(node, "name", "") in ("_check_module", "_HookBase", "HookBwd")]
    return "\n\n\n".join(pasted) + "\n"


def answers_of(student: str, lesson: str) -> dict[str, str]:
    """grade_id -> what this student types: the styles HANDS gives them (no entry for a "-")."""
    hand = HANDS[lesson][student]
    return {gid: STYLES[lesson][gid][int(k)] for gid, k in zip(STYLES[lesson], hand) if k != "-"}


def _typed(lesson: str, student: str, plan: str) -> dict[str, str]:
    """The answers a student with this plan types (a planted answer replaces or precedes their own)."""
    if plan == "copied":
        return dict(COPIED)
    typed = answers_of(student, lesson)
    if plan == "pasted":
        typed.update(HookBwd=pasted_hook(), grad_cam_map=PASTED_CAM)
    elif plan == "writer":
        typed["is_cat"] = WRITER + typed["is_cat"]
    elif plan == "loop":
        typed[LOOP_CELL] = LOOP + typed[LOOP_CELL]
    elif plan == "tamper":
        typed["prob_cat"] = TAMPER
    return typed


def notebook(lesson: str, plan: str, student: str | None = None):
    """The notebook a student with this plan hands in (by default, the class's student with that plan)."""
    student = student or next(sid for sid, plans in PLANS.items() if plans.get(lesson) == plan)
    if plan == "blank":
        return classroom.submission(lesson, "blank")
    kind = {"late": "partly", "partly": "partly", "stripped": "stripped"}.get(plan, "correct")
    typed = _typed(lesson, student, plan)
    if kind == "partly":        # the last exercise left as released
        typed.pop(classroom.exercises(lesson)[-1], None)
    return classroom.submission(lesson, kind, wrong=typed)


def _bytes(nb) -> bytes:
    return json.dumps(nb, indent=1).encode()


def _stamp(day: int, hour: int) -> tuple:
    """A zip entry time in November 2026 (zip times have no zone: `course collect` reads them as UTC)."""
    return (2026, 11, day, hour, 0, 0)


def _handing_in(lesson: str):
    """(position, id, first name, last name, LMS user id, plan) of each student who hands in this lesson."""
    for n, (sid, first, last, uid) in enumerate(STUDENTS):
        if PLANS[sid].get(lesson):
            yield n, sid, first, last, uid, PLANS[sid][lesson]


def canvas_entries(lesson: str) -> dict[str, tuple[bytes, tuple]]:
    """Canvas bulk download: one entry per upload, named lastnamefirstname_userid_submissionid_file."""
    entries = {}
    for n, sid, first, last, uid, plan in _handing_in(lesson):
        login = squash(last + first)                  # Canvas logins: lastnamefirstname, ASCII
        late = "_LATE" if plan == "late" else ""
        name = f"Copy of {lesson} (1).ipynb" if plan == "renamed" else f"{lesson}.ipynb"
        when = _stamp(*HANDED_IN.get((sid, lesson), (20, 9 + n)))
        if plan == "duplicate":      # an earlier, partly done upload; Canvas names the later one -1
            entries[f"{login}_{uid}_{4000 + n}_{name}"] = (_bytes(notebook(lesson, "partly", sid)), _stamp(18, 9))
            name = f"{lesson}-1.ipynb"
        entries[f"{login}{late}_{uid}_{5000 + n}_{name}"] = (_bytes(notebook(lesson, plan, sid)), when)
    entries[f"okaforadaeze_1101_5000_{lesson}_notes.pdf"] = (b"%PDF-1.4 (a scan of handwritten notes)\n", _stamp(20, 9))
    entries[f"smithjordan_1999_5999_{lesson}.ipynb"] = (_bytes(notebook(lesson, "correct", "smithjordan")),
                                                        _stamp(21, 9))
    return entries


def moodle_entries(lesson: str) -> dict[str, tuple[bytes, tuple]]:
    """Moodle bulk download: a folder per student and submission plugin, the files inside."""
    entries = {}
    for n, sid, first, last, uid, plan in _handing_in(lesson):
        folder = f"{first} {last}_{uid}_assignsubmission_file_"
        when = _stamp(*HANDED_IN.get((sid, lesson), (22, 9 + n)))
        data = _bytes(notebook(lesson, plan, sid))
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


COURSE_TOML = """\
# The example class's due dates, one extension and the late policy (grader/late.py; `course export` applies it).
[due]
"01_setup" = 2026-11-26T23:59:00+01:00
"05_gradcam" = 2026-11-23T23:59:00+01:00

[extensions.dvolkov]
"05_gradcam" = 2026-11-26T23:59:00+01:00

[late]
grace_minutes = 15
per_day_percent = 10
cap_percent = 50
refuse_after_days = 14
"""
# Canvas assignment ids of the lessons, and a column of the Canvas course that is not ours (left as it is).
CANVAS_IDS = {"01_setup": 20101, "05_gradcam": 20105}
CANVAS_QUIZ = "Reading quiz 1 (20102)"
CANVAS_TOTALS = ["Current Points", "Final Points", "Current Score", "Unposted Current Score", "Final Score",
                 "Unposted Final Score"]


def _canvas_row(name: str, canvas_id: int, sis_id: str, login: str, quiz: float | None) -> list[str]:
    """One student's row as Canvas exports it before any lesson is graded: only the quiz has a score."""
    points = quiz or 0.0
    percent = [f"{100 * points / 5:.2f}"] * 2 + [f"{100 * points / 19:.2f}"] * 2
    return [name, str(canvas_id), sis_id, login, "CAM 2026", "", "" if quiz is None else f"{quiz:.2f}", "",
            f"{points:.2f}", f"{points:.2f}", *percent]


def canvas_gradebook_csv() -> bytes:
    """The Canvas gradebook export (Grades > Export) of the class, in the layout of tests/data/lms/SOURCES.md."""
    lessons = [f"{lesson} ({CANVAS_IDS[lesson]})" for lesson in LESSONS]
    rows = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", lessons[0], CANVAS_QUIZ, lessons[1],
             *CANVAS_TOTALS],
            ["", "", "", "", "", "Manual Posting", "", "Manual Posting", *[""] * 6],
            ["    Points Possible", "", "", "", "", "6.00", "5.00", "8.00", *["(read only)"] * 6]]
    people = [(last, first, uid, sid) for sid, first, last, uid in STUDENTS] + [("Smith", "Jordan", 1999, "jsmith")]
    for last, first, uid, sid in sorted(people):
        quiz = None if sid == "hsato" else float(3 + uid % 3)
        rows.append(_canvas_row(f"{last}, {first}", uid, f"S{uid}", sid, quiz))
    rows.append(_canvas_row("Student, Test", 2000, "", "0b5e2c71d4a94f3e", None))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def build() -> dict[str, bytes]:
    """Every file of examples/class/, by name."""
    return {"roster.csv": roster_csv(), "01_setup.zip": zip_bytes(canvas_entries("01_setup")),
            "05_gradcam.zip": zip_bytes(moodle_entries("05_gradcam")), "course.toml": COURSE_TOML.encode(),
            "canvas_gradebook.csv": canvas_gradebook_csv()}


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
