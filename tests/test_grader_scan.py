"""The static scan: tampering is flagged with its line; ordinary answers, the solutions included, are not."""
from __future__ import annotations

import sys

import pytest

from grader.layout import ROOT
from grader.scan import scan_cells, scan_source

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from release import lessons  # noqa: E402


@pytest.mark.parametrize("lesson", lessons())
def test_no_solution_answer_is_flagged(lesson):
    assert scan_cells(classroom.answers(lesson)) == []


TAMPERING = [
    ("torch.allclose = lambda *a, **k: True", "torch.allclose"),
    ("import numpy as np\nnp.testing.assert_allclose = lambda *a, **k: None", "np.testing.assert_allclose"),
    ("import course_utils.checks as g\ng.check_tensor = print", "check_tensor"),
    ("from course_utils import grading\ngrading.check_bool = lambda *a: None", "grading.check_bool"),
    ("def check_tensor(*a, **k):\n    pass", "redefines `check_tensor`"),
    ("quiet = None", "assigns `quiet`"),
    ("from unittest.mock import MagicMock as check_number", "binds `check_number`"),
    ("setattr(torch, 'allclose', lambda *a: True)", "calls setattr on `torch`"),
    ("import builtins\nbuiltins.isinstance = lambda *a: True", "builtins.isinstance"),
    ("__builtins__.len = lambda x: 3", "__builtins__.len"),
    ("get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)", "set_custom_exc"),
    ("import sys\nsys.modules['course_utils.checks'] = object()", "sys.modules"),
    ("import sys\nsys.modules.pop('torch')", "sys.modules"),
    ("import sys\nsys.settrace(lambda *a: None)", "settrace"),
    ("import ctypes", "imports ctypes"),
    ("from ctypes import pythonapi", "imports ctypes"),
    ("import gc\ngc.get_objects()", "gc"),
    ("import sys\nf = sys._getframe(1)", "frames"),
    ("import os\nprint(os.environ['HOME'])", "os.environ"),
    ("import os\nos.getenv('NBGRADER_EXECUTION')", "grading environment"),
    ("open('../../../gradebook.db', 'w')", "gradebook"),
    ("open('/proc/self/fd/3', 'wb')", "/proc/"),
    ("import os\nos.write(3, b'{}')", "os.write"),
    ("exec('torch.allclose = 1')", "exec"),
    ("exec('torch.allclose = 1')", "assigns `torch.allclose` (in a string given to exec)"),
    ("code = 'torch.allclose = 1'\nexec(code)", "runs code built at run time (exec)"),
    ("eval(compile(source, '<x>', 'exec'))", "runs code built at run time (compile)"),
    ("import builtins\nbuiltins.exec(''.join(parts))", "runs code built at run time (exec)"),
    ("def f():\n    return __import__('ctypes').CDLL(None)", "imports ctypes"),
    ("m = __import__('ct' + 'ypes')", "imports a module whose name is built at run time (__import__)"),
    ("import importlib\nimportlib.import_module('gc').get_objects()", "imports gc"),
    ("class Anything:\n    pass\nAnything.__eq__ = lambda s, o: True", "__eq__"),
    ("%config Application.log_level = 0\nimport subprocess", "imports subprocess"),
]


@pytest.mark.parametrize("code,why", TAMPERING, ids=[t[1] for t in TAMPERING])
def test_tampering_is_flagged_with_its_line(code, why):
    found = scan_source(code)
    assert found, f"not flagged: {code!r}"
    assert any(why in reason for _, reason in found), found
    last = len(code.splitlines())
    assert all(1 <= line <= last for line, _ in found)


BENIGN = ["x = torch.zeros(3)\nx.requires_grad_()", "learn.model.eval()", "np.allclose(a, b)",
          "with open('my_notes.txt') as f:\n    text = f.read()", "import os\nos.path.join('a', 'b')",
          "hook = Hook(learn.model[0])\nacts = hook.stored", "torch.manual_seed(0)", "plt.imshow(img)",
          "class HookBwd:\n    def __eq__(self, other):\n        return self is other",
          "!ls", "%time y = model(x)", "def is_cat(name):\n    return name[0].isupper()",
          "this is not python (",
          "def warn_once(msg):\n    __import__('warnings').warn(msg)\n    return __import__('os.path').path.sep",
          "from re import compile\nDIGITS = compile(r'\\d+')\npattern = compile(text)",
          "import importlib\nmodule = importlib.import_module('numpy')", "x = eval('1 + 2')\nexec('y = x * 2')",
          "f = eval('lambda t: t.mean()')"]


@pytest.mark.parametrize("code", BENIGN)
def test_ordinary_code_is_not_flagged(code):
    assert scan_source(code) == []


def test_a_correct_answer_that_imports_inside_its_functions_is_not_flagged():
    """Was a correct notebook that calls `__import__('warnings')` flagged 'runs code built at run time'?"""
    cells = classroom.answers("01_setup") | {
        "is_cat": "def is_cat(name):\n    __import__('warnings').warn('checking ' + name)\n"
                  "    return name[0].isupper()\n"}
    assert scan_cells(cells) == []


def test_reasons_name_the_cell_and_the_line():
    reasons = scan_cells({"prob_cat": "y = 1\ntorch.allclose = None"})
    assert reasons == ["cell 'prob_cat', line 2: assigns `torch.allclose`"]
