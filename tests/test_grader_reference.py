"""Answers taken from course_utils (the course's reference answers) are flagged for review, honest ones are not."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import nbformat
import pytest

from grader import protocol
from grader.assemble import assemble
from grader.layout import ROOT
from grader.reference import REFERENCES, Watch, reference_flags, scan_lesson_cells
from tools import classroom

LESSONS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
HOOKBWD, TARGET = "course_utils.hooks.HookBwd", "course_utils.inputs.target_indices"
SETUP_05 = ("setup", "import course_utils as cu\nfrom course_utils import get_learner, test_image, Hook, gradcam, "
                     "cam, show_cam\n", False)


def flags_05(*cells: tuple[str, str]) -> list[str]:
    """Lesson 05's flags for the student's cells (label, source) after the lesson's own setup cell."""
    return scan_lesson_cells("05_gradcam", [SETUP_05, *((label, source, True) for label, source in cells)])


def code_answers(lesson: str) -> dict[str, str]:
    """grade_id -> solution source of the lesson's code answer cells."""
    nb = nbformat.read(classroom.notebook_path(ROOT / "solutions", lesson), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")}


# ----------------------------------------------------------------------------- the table
def test_the_table_names_every_code_exercise_of_every_lesson_and_nothing_else():
    assert sorted(REFERENCES) == LESSONS
    for lesson in LESSONS:
        assert set(REFERENCES[lesson]) == set(code_answers(lesson)), lesson


@pytest.mark.parametrize("lesson", LESSONS)
def test_each_exercise_lists_the_names_its_answer_defines(lesson):
    for grade_id, source in code_answers(lesson).items():
        tree = ast.parse(source)
        defined = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert set(REFERENCES[lesson][grade_id].answers) == defined, grade_id


def test_every_listed_reference_is_a_real_object_where_it_says():
    """Does each dotted name import, and is it defined in that very module (not re-exported there)?"""
    for lesson, exercises in REFERENCES.items():
        for grade_id, exercise in exercises.items():
            for dotted in exercise.references:
                module, name = dotted.rsplit(".", 1)
                obj = getattr(importlib.import_module(module), name)
                assert obj.__module__ == module, f"{lesson}/{grade_id}: {dotted} is defined in {obj.__module__}"


# ----------------------------------------------------------------------------- static: each variant
VARIANTS = {
    "binds": ("HookBwd = cu.HookBwd\n", 1),
    "subclasses": ("class HookBwd(cu.HookBwd):\n    pass\n", 1),
    "wraps": ("class HookBwd:\n    def __init__(self, m):\n        self.inner = cu.HookBwd(m)\n", 3),
    "returns": ("def make():\n    return cu.HookBwd\nHookBwd = make()\n", 2),
    "from-import-as": ("from course_utils.hooks import HookBwd as H\n", 1),
    "module-as": ("import course_utils.hooks as h\nHookBwd = h.HookBwd\n", 2),
    "package-as": ("import course_utils as c\nHookBwd = c.HookBwd\n", 2),
    "alias-reassigned": ("x = cu\ny = x.hooks\nHookBwd = y.HookBwd\n", 3),
    "getattr-concat": ("HookBwd = getattr(cu, 'Hook' + 'Bwd')\n", 1),
    "getattr-fstring": ("part = 'Hook'\nHookBwd = getattr(cu.hooks, f'{part}Bwd')\n", 2),
    "getattr-join": ("HookBwd = getattr(cu, ''.join(['Ho', 'ok', 'Bwd']))\n", 1),
    "getattr-reversed": ("HookBwd = getattr(cu, 'dwBkooH'[::-1])\n", 1),
    "vars": ("HookBwd = vars(cu.hooks)['HookBwd']\n", 1),
    "__dict__": ("HookBwd = cu.__dict__.get('HookBwd')\n", 1),
    "import_module": ("import importlib\nHookBwd = importlib.import_module('course_' + 'utils.hooks').HookBwd\n", 2),
    "__import__": ("HookBwd = getattr(__import__('course_utils'), 'HookBwd')\n", 1),
    "sys.modules": ("import sys\nHookBwd = sys.modules['course_utils.hooks'].HookBwd\n", 2),
    "exec": ("exec('HookBwd = cu.' + 'HookBwd')\n", 1),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_answer_built_on_the_reference_is_flagged_with_its_line(variant):
    source, line = VARIANTS[variant]
    assert f"cell 'HookBwd': line {line}: uses the course's reference answer {HOOKBWD} (review)" in flags_05(
        ("HookBwd", source))


def test_a_private_helper_of_the_reference_module_is_flagged():
    assert flags_05(("HookBwd", "class HookBwd(cu.hooks._HookBase):\n    pass\n")) == [
        "cell 'HookBwd': line 1: uses the course's reference answer course_utils.hooks._HookBase (review)"]


@pytest.mark.parametrize("source", [
    "from course_utils.cam import target_indices\n\ndef target_score(output, targets):\n"
    "    t = target_indices(targets, len(output), output.shape[1], output.device)\n"
    "    return output.gather(1, t[:, None]).sum()\n",
    "def target_score(output, targets):\n    t = cu.inputs.target_indices(targets, len(output), output.shape[1], None)\n"
    "    return output.gather(1, t[:, None]).sum()\n",
])
def test_a_target_score_built_on_cams_target_helper_is_flagged(source):
    assert any(TARGET in f and f.startswith("cell 'target_score': line ") for f in flags_05(("target_score", source)))


def test_a_name_a_lesson_cell_imported_counts_when_the_answer_uses_it():
    """Lesson 04's setup imports book_cam for its demos: is an answer that calls it flagged?"""
    setup = ("setup", "from course_utils import get_learner, test_image, test_image_box, Hook, book_cam, cam\n", False)
    flags = scan_lesson_cells("04_cam", [setup, ("location_scores",
                                                 "def location_scores(weight, act):\n    return book_cam(act, weight)\n",
                                                 True)])
    assert flags == ["cell 'location_scores': line 2: uses the course's reference answer course_utils.cam.book_cam (review)"]


def test_an_added_cell_that_binds_the_answer_name_is_flagged_and_a_stub_answer_is_not():
    stub = "class HookBwd:\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    assert flags_05(("HookBwd", stub), ("#9", "\n\nHookBwd = getattr(cu, 'HookBwd')\n")) == [
        f"cell '#3': line 3: uses the course's reference answer {HOOKBWD} (review)"]


def test_a_helper_defined_in_an_added_cell_is_followed_into_the_answer():
    helper = ("#6", "def helper(o, t):\n    return o.gather(1, cu.inputs.target_indices(t, len(o), o.shape[1], None)"
                    "[:, None]).sum()\n")
    flags = flags_05(helper, ("target_score", "def target_score(output, targets):\n    return helper(output, targets)\n"))
    assert flags == [f"cell 'target_score': line 2: uses the course's reference answer {TARGET} (review)"]


def test_a_lookup_built_at_run_time_in_course_utils_is_flagged():
    assert flags_05(("HookBwd", "name = input()\nHookBwd = getattr(cu.hooks, name)\n")) == [
        "cell 'HookBwd': line 2: looks up a name of course_utils.hooks built at run time (review)"]


def test_code_nested_past_what_python_parses_is_flagged_not_a_crash():
    assert flags_05(("HookBwd", "x = " + "+".join(["a"] * 3000) + "\n")) == [
        "cell 'HookBwd': line 1: is nested too deeply to check for the course's reference answers (review)"]


@pytest.mark.parametrize("cells", [
    [("HookBwd", "class HookBwd(Hook):\n    def hook_func(self, m, i, o):\n        o.register_hook(self.keep)\n")],
    [("#5", "maps = gradcam(learn.model, x, learn.model[0], 1)\nwith cu.HookBwd(learn.model[0]) as h:\n    pass\n")],
    [("gradcam_matches_cam", "def gradcam_matches_cam(model, x, layer, targets):\n"
                             "    return bool(torch.allclose(gradcam(model, x, layer, targets), cam(model, x, targets)))\n")],
    [("grad_cam_map", "def grad_cam_map(act, grad):\n    gradcam = grad.mean((1, 2), keepdim=True)\n"
                      "    return (gradcam * act).sum(0)\n")],
])
def test_what_the_lesson_lets_students_use_is_not_flagged(cells):
    """The course's Hook, exploring with the reference in an added cell, gradcam where the exercise is built on
    it, and a local variable that shadows an imported name."""
    assert flags_05(*cells) == []


@pytest.mark.parametrize("lesson", LESSONS)
@pytest.mark.parametrize("kind", ["correct", "blank"])
def test_honest_and_blank_notebooks_raise_no_reference_flag(lesson, kind):
    release = nbformat.read(classroom.notebook_path(ROOT / "notebooks", lesson), as_version=4)
    assembled = assemble(classroom.submission(lesson, kind), release, {})
    assert assembled.student_cells, "the test should read some of the student's cells"
    assert reference_flags(lesson, assembled) == []


# ----------------------------------------------------------------------------- run time: the examiner's watch
def answered(value, handle: int = 1) -> dict:
    """An answer as the student's process sends it: a handle with where its object was defined."""
    return {"$": "ref", "id": handle, "type": type(value).__name__, "kinds": [], "where": protocol.origins(value)}


def test_the_watch_notes_the_reference_its_subclasses_and_instances_asked_for_by_answer_name():
    from course_utils import hooks
    from torch import nn

    class Sub(hooks.HookBwd):
        pass
    for value in (hooks.HookBwd, Sub, Sub(nn.Linear(1, 1))):
        watch = Watch("05_gradcam")
        watch.received({"op": "get", "name": "HookBwd"}, answered(value))
        assert watch.take() == [f"uses the course's reference answer {HOOKBWD} (review)"], value


def test_the_watch_follows_handles_and_ignores_what_the_test_takes_from_course_utils_itself():
    from course_utils import hooks
    from torch import nn
    watch = Watch("02_forward_hooks")
    watch.received({"op": "get", "name": "course_utils"}, answered(hooks, 1))
    watch.received({"op": "attr", "of": 1, "name": "Hook"}, answered(hooks.Hook, 2))   # the test's own check
    assert watch.take() == []

    class Mine:
        def __init__(self, m):
            self.inner = hooks.Hook(m)
    watch.received({"op": "get", "name": "Hook"}, answered(Mine, 3))
    assert watch.take() == []
    watch.received({"op": "call", "of": 3, "args": []}, answered(Mine(nn.Linear(1, 1)), 4))
    watch.received({"op": "attr", "of": 4, "name": "inner"}, answered(hooks.Hook(nn.Linear(1, 1)), 5))
    assert watch.take() == ["uses the course's reference answer course_utils.hooks.Hook (review)"]


def test_an_honest_class_and_the_course_hook_under_another_exercise_are_not_noted():
    from course_utils import hooks

    class HookBwd(hooks.Hook):                 # lesson 05 lets a student build on the course's forward Hook
        pass
    watch = Watch("05_gradcam")
    watch.received({"op": "get", "name": "HookBwd"}, answered(HookBwd))
    watch.received({"op": "get", "name": "HookBwd"}, {"$": "ref", "id": 2, "where": [3, "course_utils.hooks:HookBwd"]})
    assert watch.take() == []


# ----------------------------------------------------------------------------- one real `course grade`
def test_course_grade_flags_an_answer_that_is_the_reference_and_grades_an_honest_one(tmp_path):
    lesson = "05_gradcam"
    course = classroom.new_course(tmp_path / "course", [lesson])
    classroom.hand_in(course, "copier", lesson,
                      classroom.submission(lesson, "correct", wrong={"HookBwd": "HookBwd = cu.HookBwd\n"}))
    classroom.hand_in(course, "honest", lesson, classroom.submission(lesson, "correct"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "grader", "grade", lesson, "--course", str(course),
                           "--workers", "1", "--quiet"], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[1]: line for line in done.stdout.splitlines()       # "  05_gradcam  copier  8/8  flagged ..."
            if line.split()[:1] == [lesson] and len(line.split()) > 1}
    assert "flagged" in rows["copier"], done.stdout
    assert f"cell 'HookBwd': line 1: uses the course's reference answer {HOOKBWD} (review)" in rows["copier"]
    assert "test_HookBwd" in rows["copier"], "the examiner's tripwire should name the test that received it"
    assert "graded" in rows["honest"] and "flagged" not in rows["honest"], done.stdout
