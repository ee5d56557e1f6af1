"""Flag what a machine should not decide: code in a student's cells that could fool the tests.

Grading runs the student's code in the same process as the tests, so that code could patch the
checks. The sandbox cannot stop this; a person should look. The scan reads the student's own cells
(answers, added cells, edited ordinary cells) and reports each suspicious line with a reason. A
flagged submission keeps its computed score; it is never silently trusted.
"""
from __future__ import annotations

import ast

from IPython.core.inputtransformer2 import TransformerManager

# Names whose attributes a student has no reason to reassign, and how they are usually imported.
WATCHED_MODULES = {"torch", "numpy", "np", "course_utils", "cu", "builtins", "__builtins__", "F", "nn",
                   "fastai", "grading", "unittest", "math", "nbgrader", "IPython"}
TEST_HELPERS = {"quiet", "check_tensor", "check_number", "check_bool", "as_tensor", "assert_allclose"}
SUSPICIOUS_CALLS = {
    "set_custom_exc": "installs a custom exception handler (can hide failing tests)",
    "settrace": "installs a trace function", "setprofile": "installs a profile function",
    "_getframe": "reads the interpreter's frames", "currentframe": "reads the interpreter's frames",
    "stack": None,  # inspect.stack(): only when called on `inspect`
    "get_objects": "walks every object in memory", "get_referrers": "walks every object in memory",
    "reload": "reloads a module", "fdopen": "opens a raw file descriptor", "dup2": "redirects a file descriptor",
    "getenv": "reads the grading environment", "register_magic_function": "redefines IPython's behaviour",
}
MODULE_CALLS = {("inspect", "stack"), ("os", "write"), ("os", "read"), ("sys", "exit"), ("os", "kill")}
READ_PLACES = ("gradebook", "submitted", "autograded", "solutions", "nbgrader_config", "/proc/", "source/", "..")


def _chain(node: ast.AST) -> list[str]:
    """`a.b.c` -> ['a', 'b', 'c']; [] when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):
        node = node.func
        inner = _chain(node)
        return inner + ["()"] + parts[::-1] if inner else []
    if isinstance(node, ast.Subscript):
        inner = _chain(node.value)
        return inner + ["[]"] + parts[::-1] if inner else []
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return []


class _Visitor(ast.NodeVisitor):
    def __init__(self):
        self.found: list[tuple[int, str]] = []

    def flag(self, node: ast.AST, why: str) -> None:
        self.found.append((getattr(node, "lineno", 0), why))

    def _target(self, target: ast.AST, verb: str) -> None:
        chain = _chain(target)
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, verb)
        elif isinstance(target, ast.Name) and target.id in TEST_HELPERS | WATCHED_MODULES:
            self.flag(target, f"{verb} `{target.id}`, which the tests rely on")
        elif isinstance(target, (ast.Attribute, ast.Subscript)) and chain:
            if chain[0] in WATCHED_MODULES or chain[-1] in TEST_HELPERS or "()" in chain[:2] and chain[0] == "get_ipython":
                self.flag(target, f"{verb} `{'.'.join(chain)}`")
            elif chain[:2] == ["sys", "modules"]:
                self.flag(target, "changes sys.modules")
            elif chain[-1].startswith("__") and chain[-1].endswith("__") and chain[-1] in {"__eq__", "__class__", "__bool__", "__code__", "__globals__"}:
                self.flag(target, f"{verb} `{'.'.join(chain)}`")

    def visit_Assign(self, node):
        for t in node.targets:
            self._target(t, "assigns")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._target(node.target, "assigns")
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._target(node.target, "assigns")
        self.generic_visit(node)

    def visit_Delete(self, node):
        for t in node.targets:
            self._target(t, "deletes")
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        if node.name in TEST_HELPERS:
            self.flag(node, f"redefines `{node.name}`, which the tests rely on")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        if node.name in TEST_HELPERS:
            self.flag(node, f"redefines `{node.name}`, which the tests rely on")
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self._import(node, alias.name, alias.asname)
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        for alias in node.names:
            self._import(node, f"{node.module or ''}.{alias.name}", alias.asname or alias.name)
        self.generic_visit(node)

    def _import(self, node, name: str, bound: str | None) -> None:
        top = name.lstrip(".").split(".")[0]
        if top in {"ctypes", "gc", "signal", "socket", "subprocess"} or name.endswith(".ctypes"):
            self.flag(node, f"imports {top}")
        if bound in TEST_HELPERS and not name.startswith("course_utils.checks"):
            self.flag(node, f"binds `{bound}`, which the tests rely on, to {name}")

    def visit_Call(self, node):
        chain = _chain(node.func)
        name = chain[-1] if chain else ""
        if name in ("setattr", "delattr") and node.args:
            base = _chain(node.args[0])
            if base and (base[0] in WATCHED_MODULES or base[0] == "get_ipython"):
                self.flag(node, f"calls {name} on `{'.'.join(base)}`")
        elif _builtin(chain) and name == "__import__" or chain[-2:] == ["importlib", "import_module"]:
            self._dynamic_import(node, name)
        elif _builtin(chain) and name in ("exec", "eval") or _builtin(chain) and name == "compile" and _compiles(node):
            self._run_string(node, name)
        elif SUSPICIOUS_CALLS.get(name):
            self.flag(node, f"calls {name}: {SUSPICIOUS_CALLS[name]}")
        elif len(chain) >= 2 and (chain[-2], name) in MODULE_CALLS:
            self.flag(node, f"calls {chain[-2]}.{name}")
        elif chain[:2] == ["sys", "modules"] and name in {"pop", "update", "setdefault", "clear", "__setitem__"}:
            self.flag(node, "changes sys.modules")
        if name in ("open", "listdir", "scandir", "walk", "glob", "iglob", "Path", "read_text", "read_bytes"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and any(
                        p in arg.value for p in READ_PLACES):
                    self.flag(node, f"reads '{arg.value}' (the grading environment)")
        self.generic_visit(node)

    def _dynamic_import(self, node: ast.Call, name: str) -> None:
        """`__import__('warnings')` is an import statement spelt as a call; only a name built at run time flags."""
        module = node.args[0] if node.args else None
        if isinstance(module, ast.Constant) and isinstance(module.value, str):
            self._import(node, module.value, None)
        else:
            self.flag(node, f"imports a module whose name is built at run time ({name})")

    def _run_string(self, node: ast.Call, name: str) -> None:
        """exec/eval/compile of a string written in the cell: scan that string; of anything else: flag."""
        code = node.args[0] if node.args else None
        if not (isinstance(code, ast.Constant) and isinstance(code.value, str)):
            self.flag(node, f"runs code built at run time ({name})")
            return
        try:
            tree = ast.parse(code.value)
        except (SyntaxError, ValueError):
            return                                   # not Python: it fails when it runs, hiding nothing
        inner = _Visitor()
        inner.visit(tree)
        for _, why in inner.found:
            self.flag(node, f"{why} (in a string given to {name})")

    def visit_Attribute(self, node):
        chain = _chain(node)
        if chain[:2] == ["os", "environ"] and isinstance(node.ctx, ast.Load):
            self.flag(node, "reads the grading environment (os.environ)")
        self.generic_visit(node)


def _builtin(chain: list[str]) -> bool:
    """A call of a builtin by its bare name, or through `builtins` / `__builtins__`."""
    return len(chain) == 1 or len(chain) == 2 and chain[0] in ("builtins", "__builtins__")


def _compiles(node: ast.Call) -> bool:
    """Builtin compile(source, filename, mode), not re.compile(pattern) imported as `compile`."""
    return len(node.args) >= 3 or any(k.arg in ("filename", "mode") for k in node.keywords)


def scan_source(source: str) -> list[tuple[int, str]]:
    """(line, reason) for each suspicious construct in one cell's source (IPython syntax allowed)."""
    try:
        code = TransformerManager().transform_cell(source)
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []          # it will fail when it runs; nothing to hide
    visitor = _Visitor()
    visitor.visit(tree)
    seen, unique = set(), []
    for line, why in sorted(visitor.found):
        if (line, why) not in seen:
            seen.add((line, why))
            unique.append((line, why))
    return unique


def scan_cells(cells: dict[str, str]) -> list[str]:
    """Reasons for review, one per finding: `cell 'label', line N: what it does`."""
    return [f"cell '{label}', line {line}: {why}" for label, source in cells.items()
            for line, why in scan_source(source)]
