"""`course similarity`: copied solutions rank first, honest ones stay under the threshold, templates match nothing."""
import dataclasses
import hashlib
import time

import pytest

import classroom
from grader import cli
from grader.gradebook import CourseError
from grader.similarity import DEFAULT_THRESHOLD, KNOWN, STUDENTS, plain_python, similarity

LESSON = "02_forward_hooks"

# Honest, correct answers to the lesson's three exercises, each written in its own style.
HONEST = {
    "ada": {
        "hook_class": """class Hook:
    def __init__(self, m):
        self.hook = m.register_forward_hook(self.hook_func)

    def hook_func(self, m, i, o):
        self.stored = o.detach().clone()

    def remove(self):
        self.hook.remove()
""",
        "count_hooks": """def count_hooks(module):
    total = 0
    for sub in module.modules():
        total += len(sub._forward_hooks)
    return total
""",
        "get_activation": """def get_activation(model, layer, x):
    hook = Hook(layer)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return hook.stored
""",
    },
    "bo": {
        "hook_class": """class Hook:
    \"\"\"Keeps a copy of what the module returns.\"\"\"
    def __init__(self, module):
        self.stored = None
        self._h = module.register_forward_hook(self._save)

    def _save(self, module, inputs, output):
        # clone: a later in-place ReLU must not change what we kept
        self.stored = output.detach().clone()

    def remove(self):
        if self._h is not None:
            self._h.remove()
            self._h = None
""",
        "count_hooks": """def count_hooks(module):
    return sum([len(m._forward_hooks) for m in module.modules()])
""",
        "get_activation": """def get_activation(model, layer, x):
    box = []
    handle = layer.register_forward_hook(lambda mod, inp, out: box.append(out.detach().clone()))
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return box[0]
""",
    },
    "chen": {
        "hook_class": """class Hook():
    def __init__(self, layer):
        def grab(mod, args, result):
            self.stored = result.detach().clone()
        self.handle = layer.register_forward_hook(grab)
    def remove(self): self.handle.remove()
""",
        "count_hooks": """def count_hooks(module):
    n = len(module._forward_hooks)
    for child in module.children():
        n = n + count_hooks(child)
    return n
""",
        "get_activation": """def get_activation(model, layer, x):
    saved = {}
    def keep(m, i, o):
        saved['out'] = o.clone().detach()
    h = layer.register_forward_hook(keep)
    model = model.eval()
    try:
        with torch.no_grad():
            _ = model(x)
    finally:
        h.remove()
    return saved['out']
""",
    },
    "dee": {
        "hook_class": """class Hook:
    stored = None

    def __init__(self, target_module):
        self.registration = target_module.register_forward_hook(self.callback)

    def callback(self, *args):
        out = args[-1]
        self.stored = out.detach().clone()

    def remove(self):
        self.registration.remove()
""",
        "count_hooks": """def count_hooks(module):
    seen = set()
    count = 0
    for m in module.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        count += len(m._forward_hooks)
    return int(count)
""",
        "get_activation": """def get_activation(model, layer, x):
    was_training = model.training
    model.eval()
    hook = Hook(layer)
    try:
        with torch.inference_mode():
            model(x)
        activation = hook.stored
    finally:
        hook.remove()
    return activation
""",
    },
    "eli": {
        "hook_class": """import torch

class Hook:
    def __init__(self, m: torch.nn.Module):
        self.m = m
        self.stored = None
        self.h = self.m.register_forward_hook(lambda mod, inp, outp: self.store(outp))

    def store(self, outp):
        with torch.no_grad():
            self.stored = outp.clone().detach()

    def remove(self):
        self.h.remove()
""",
        "count_hooks": """def count_hooks(module):
    hooks = [h for sub in module.modules() for h in sub._forward_hooks.values()]
    return len(hooks)
""",
        "get_activation": """def get_activation(model, layer, x):
    outputs = []
    registered = layer.register_forward_hook(lambda *a: outputs.append(a[2].detach().clone()))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        registered.remove()
    if not outputs:
        raise RuntimeError("the layer never ran")
    return outputs[-1]
""",
    },
}

# One solution handed in by two students: the second renamed every variable and rewrote the comments.
COPIED = {
    "hook_class": """class Hook:
    # store the layer's output each time the model runs
    def __init__(self, module):
        self.stored = None
        self.removed = False
        self.handle = module.register_forward_hook(self.on_forward)

    def on_forward(self, module, inputs, output):
        if isinstance(output, (tuple, list)):
            self.stored = type(output)(o.detach().clone() for o in output)
        else:
            self.stored = output.detach().clone()

    def remove(self):
        if not self.removed:
            self.handle.remove()
            self.removed = True
""",
    "count_hooks": """def count_hooks(module):
    counted = {}
    for name, sub in module.named_modules():
        counted[id(sub)] = len(sub._forward_hooks)
    return sum(counted.values())
""",
    "get_activation": """def get_activation(model, layer, x):
    result = {}
    def store(module, inputs, output):
        result['act'] = output.detach().clone()
    handle = layer.register_forward_hook(store)
    mode = model.training
    try:
        with torch.no_grad():
            model.train(False)
            model(x)
    finally:
        handle.remove()
    return result['act']
""",
}
RENAMED = {
    "hook_class": """class Hook:
    # keeps what the module computed, detached
    def __init__(self, mod):
        self.stored = None
        self.done = False
        self.reg = mod.register_forward_hook(self.fwd)

    def fwd(self, mod, ins, out):
        if isinstance(out, (tuple, list)):   # several outputs
            self.stored = type(out)(t.detach().clone() for t in out)
        else:
            self.stored = out.detach().clone()

    def remove(self):
        if not self.done:
            self.reg.remove()
            self.done = True
""",
    "count_hooks": """def count_hooks(module):
    per_module = {}
    for nm, m in module.named_modules():
        per_module[id(m)] = len(m._forward_hooks)   # a shared module counts once
    return sum(per_module.values())
""",
    "get_activation": """def get_activation(model, layer, x):
    found = {}
    def keep(m, i, o):
        found['act'] = o.detach().clone()
    h = layer.register_forward_hook(keep)
    was = model.training
    try:
        with torch.no_grad():
            model.train(False)
            model(x)
    finally:
        h.remove()
    return found['act']
""",
}
# Their own short answers elsewhere, but the Hook answer is course_utils/hooks.py pasted in.
PASTED = {
    "count_hooks": """def count_hooks(module):
    return sum(map(lambda mod: len(mod._forward_hooks), module.modules()))
""",
    "get_activation": """def get_activation(model, layer, x):
    with Hook(layer) as grabbed:
        model.eval()
        with torch.no_grad():
            model(x)
    return grabbed.stored
""",
    "hook_class": """def _check_module(module: object) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"expected an nn.Module (a layer such as learn.model[0]), got {type(module).__name__}")
    return module


def _detach_clone(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detach_clone(o) for o in out)
    return out


class _HookBase:
    def __init__(self, module: nn.Module):
        self.module = _check_module(module)
        self.stored = None
        self._handle = module.register_forward_hook(self.hook_func)

    def hook_func(self, module: nn.Module, inputs, output) -> None:
        raise NotImplementedError

    @property
    def removed(self) -> bool:
        return self._handle is None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


class Hook(_HookBase):
    def hook_func(self, module: nn.Module, inputs, output) -> None:
        self.stored = _detach_clone(output)
""",
}


def answers_nb(typed: dict[str, str]):
    """The released notebook with these answers typed into its answer cells."""
    return classroom.submission(LESSON, "blank", wrong=typed)


def digest(folder):
    """A hash of every file under a folder (names and contents), to show nothing was written there."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A scratch course of 02_forward_hooks: honest students, a copied pair, a paster, two blanks, two broken."""
    root = classroom.new_course(tmp_path_factory.mktemp("similarity"), [LESSON])
    for sid, typed in HONEST.items():
        classroom.hand_in(root, sid, LESSON, answers_nb(typed))
    classroom.hand_in(root, "copier", LESSON, answers_nb(COPIED))
    classroom.hand_in(root, "renamer", LESSON, answers_nb(RENAMED))
    classroom.hand_in(root, "paster", LESSON, answers_nb(PASTED))
    classroom.hand_in(root, "blank1", LESSON, classroom.submission(LESSON, "blank"))
    blank = classroom.submission(LESSON, "blank")
    classroom.strip_metadata(blank)                  # an editor dropped nbgrader's metadata: still the template
    classroom.hand_in(root, "blank2", LESSON, blank)
    broken = classroom.hand_in(root, "broken", LESSON, answers_nb(HONEST["ada"]))
    broken.write_text('{"cells": [')
    (root / "submitted" / "gone" / LESSON).mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def report(course):
    return similarity(LESSON, course)


def student_pairs(report):
    return [p for p in report.pairs if p.kind == STUDENTS]


def test_copied_pair_ranks_first_among_student_pairs(report):
    """Does the pair with one solution, renamed and re-commented, rank first and get flagged?"""
    top = student_pairs(report)[0]
    assert {top.left, top.right} == {"copier", "renamer"}
    assert top.score >= DEFAULT_THRESHOLD
    assert min(top.left_share, top.right_share) > 0.8


def test_pasted_reference_ranks_first_against_known_sources(report):
    """Is 'paster vs course_utils/hooks.py' the top known-source pair, and flagged?"""
    known = [p for p in report.pairs if p.kind == KNOWN]
    assert (known[0].left, known[0].right) == ("paster", "course_utils/hooks.py")
    assert known[0] in report.flagged(KNOWN)


def test_honest_pairs_stay_under_the_threshold(report):
    """Do students who wrote their own answers (and the paster's honest parts) stay unflagged?"""
    flagged = {frozenset((p.left, p.right)) for p in report.flagged(STUDENTS)}
    assert flagged == {frozenset(("copier", "renamer"))}
    honest = set(HONEST)
    worst = max(p.score for p in student_pairs(report) if {p.left, p.right} <= honest | {"paster"})
    assert worst < DEFAULT_THRESHOLD


def test_released_template_matches_nothing(report):
    """Two students who hand in the release unchanged are no pair, and are named as template-only."""
    assert sorted(report.template_only) == ["blank1", "blank2"]
    assert not [p for p in report.pairs if {"blank1", "blank2"} & {p.left, p.right}]


def test_unreadable_or_missing_costs_only_that_student(report):
    """Are the broken and the empty submission listed with a reason while everyone else is compared?"""
    assert "not valid notebook JSON" in report.skipped["broken"]
    assert report.skipped["gone"] == "nothing handed in"
    assert set(report.students) == set(HONEST) | {"copier", "renamer", "paster"}


def test_html_report_is_self_contained_and_shows_both_sides(report):
    """Does the page list the flagged pairs with the shared code marked, and load nothing from outside?"""
    page = report.html_path.read_text()
    assert report.html_path.name == f"{LESSON}.html" and report.html_path.parent.name == "similarity"
    assert "copier / renamer" in page and "paster / course_utils/hooks.py" in page
    assert "<mark>" in page and "self.reg.remove()" in page
    assert "src=" not in page and "href='http" not in page and "<link" not in page
    assert page.index("copier / renamer") < page.index("paster / course_utils/hooks.py")


def test_grades_and_submissions_are_untouched(course):
    """Does a run leave the gradebook, the submissions and every result file exactly as they were?"""
    before = {name: digest(course / name) for name in ("submitted", "autograded", "release")}
    db = (course / "gradebook.db").read_bytes()
    similarity(LESSON, course)
    assert {name: digest(course / name) for name in before} == before
    assert (course / "gradebook.db").read_bytes() == db


def test_unknown_lesson_is_a_clear_error(course):
    """Does an unknown lesson name the lessons there are, and write nothing?"""
    with pytest.raises(CourseError, match="no lesson '99_nope'.*02_forward_hooks"):
        similarity("99_nope", course)
    assert not (course / "similarity" / "99_nope.html").exists()


def test_bad_threshold_and_known_file_are_refused(course, tmp_path):
    """Are a threshold outside (0, 1] and a --known file that is not .py/.ipynb refused with the fix?"""
    with pytest.raises(ValueError, match="between 0 and 1"):
        similarity(LESSON, course, threshold=50)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match="--known takes existing .py or .ipynb"):
        similarity(LESSON, course, known=[notes])


def test_known_file_is_compared(course, tmp_path):
    """Is a file the instructor names (e.g. the book's notebook) a known source the copy is found in?"""
    book = classroom.submission(LESSON, "blank", wrong=COPIED)
    path = classroom.write(book, tmp_path / "book.ipynb")
    report = similarity(LESSON, course, known=[path], write_html=False)
    top = [p for p in report.pairs if p.right == str(path)]
    assert {p.left for p in top[:2]} == {"copier", "renamer"} and top[0].score > 0.8


def test_magics_are_commented_out():
    """Do IPython magics and shell lines become comments, leaving code as it was?"""
    assert plain_python("%pip install x\n!ls\nx = 1\nx?") == "# %pip install x\n# !ls\nx = 1\n# x?"


def test_cli_prints_the_table_and_writes_the_page(course, capsys):
    """Does `course similarity` print the flagged pairs with both shares and say where the page is?"""
    started = time.perf_counter()
    code = cli.main(["similarity", LESSON, "--course", str(course), "--threshold", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "copier" in out and "renamer" in out and "course_utils/hooks.py" in out and "tokens" in out
    assert str(course / "similarity" / f"{LESSON}.html") in out
    assert time.perf_counter() - started < 60


def test_cli_unknown_lesson_exits_2(course, capsys):
    """Does the command turn an unknown lesson into exit code 2 and one error line?"""
    assert cli.main(["similarity", "99_nope", "--course", str(course)]) == 2
    assert "no lesson '99_nope'" in capsys.readouterr().err


def with_added_cell(typed: dict[str, str], code: str):
    """The release with these answers, and a code cell of the student's own appended at the end."""
    nb = answers_nb(typed)
    nb.cells.append(classroom.nbformat.v4.new_code_cell(code))
    return nb


def test_released_code_inside_a_students_cell_matches_nothing(tmp_path):
    """Two students paste the same released cell into a cell of their own and add their own line:
    does that shared template code add no matched token to their pair?"""
    root = classroom.new_course(tmp_path / "course", [LESSON])
    release = classroom.nbformat.read(root / "release" / LESSON / f"{LESSON}.ipynb", as_version=4)
    shared, = [c.source for c in release.cells if c.get("id") == "code-13"]
    classroom.hand_in(root, "chen", LESSON, answers_nb(HONEST["chen"]))
    classroom.hand_in(root, "dee", LESSON, answers_nb(HONEST["dee"]))
    plain = similarity(LESSON, root, write_html=False).pairs
    classroom.hand_in(root, "chen", LESSON, with_added_cell(HONEST["chen"], shared + "\nprint(act.mean())"))
    classroom.hand_in(root, "dee", LESSON, with_added_cell(HONEST["dee"], shared + "\nassert act3.ndim == 4"))
    report = similarity(LESSON, root, write_html=False)
    added = [p.label for p in report.sources["chen"].pieces]
    assert added[-1].startswith("added cell")
    pair, = [p for p in report.pairs if p.kind == STUDENTS]
    before, = [p for p in plain if p.kind == STUDENTS]
    assert pair.tokens == before.tokens


def test_a_lower_threshold_lists_more_pairs(report):
    """Does the threshold decide what is flagged (honest pairs appear once it is low enough)?"""
    low = dataclasses.replace(report, threshold=0.3)
    assert len(low.flagged(STUDENTS)) > len(report.flagged(STUDENTS)) == 1
    assert "ada" in low.table() and "ada" not in report.table().split("highest below")[0]


def test_unreleased_lesson_and_bad_names_are_clear_errors(course, tmp_path):
    """Is a lesson that exists but is not released, or a path for a name, refused with the fix?"""
    root = classroom.new_course(tmp_path / "course", [LESSON], generate=False)
    with pytest.raises(CourseError, match="course release 02_forward_hooks"):
        similarity(LESSON, root)
    with pytest.raises(ValueError, match="is not a lesson name"):
        similarity("../02_forward_hooks", course)
    assert not (root / "similarity").exists()


def test_html_is_written_whole(report):
    """Is the page in place with no temporary file left beside it?"""
    folder = report.html_path.parent
    assert [p.name for p in folder.iterdir()] == [report.html_path.name]
    assert report.html_path.read_text().rstrip().endswith("</html>")


def test_similarity_has_help(capsys):
    """Does `course similarity --help` explain the verb and its options?"""
    with pytest.raises(SystemExit):
        cli.main(["similarity", "--help"])
    out = capsys.readouterr().out
    assert "--threshold" in out and "--known" in out and "Changes no grade" in out
