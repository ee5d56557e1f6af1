"""Notice answers taken from the course's own library: course_utils holds the reference answer of most exercises.

`REFERENCES` is the one table: for each lesson and each exercise (the grade_id of its answer cell),
the names the answer defines and the course_utils objects it must not use (the object that answers
it, and the private helpers of the module that implement it). An object an exercise is meant to
build on (`gradcam` for `gradcam_matches_cam`) is not listed for it.

Two tripwires, both for review, never a verdict (the score is kept):
- `reference_flags` reads the student's cells of an assembled notebook, after following every
  lesson cell's imports and aliases: an answer cell that uses a listed object, by any name
  (aliases, `getattr` with a string built from constants, `vars(...)[...]`, `importlib`), and any
  student cell that binds an exercise's answer name to code built on the exercise's listed objects.
- `Watch` runs in the examiner: a handle that came from an answer of the notebook and whose class
  or function (as the student's process reports it) is a listed object, or an instance or subclass
  of one, is noted.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import Any, Iterator, NamedTuple

PACKAGE = "course_utils"


class Exercise(NamedTuple):
    """One answer cell: the names it defines, and the course_utils objects its answer must not use."""
    answers: tuple[str, ...]
    references: tuple[str, ...]


_HOOK = ("course_utils.hooks.Hook", "course_utils.hooks.Hooks", "course_utils.hooks._HookBase",
         "course_utils.hooks._detach_clone")
_GRADCAM = ("course_utils.cam.gradcam", "course_utils.cam.gradient_cam", "course_utils.cam.gradcam_weights",
            "course_utils.cam.weighted_sum")
_CLASS_SCORE = ("course_utils.inputs.target_indices",)     # cam.py's `_target_tensor` before it was made public

REFERENCES: dict[str, dict[str, Exercise]] = {
    "01_setup": {
        "is_cat": Exercise(("is_cat",), ("course_utils.data.is_cat",)),
        "cat_index": Exercise(("cat_index",), ()),
        "as_batch": Exercise(("as_batch",), ()),
        "prob_cat": Exercise(("prob_cat",), ()),
    },
    "02_forward_hooks": {
        "hook_class": Exercise(("Hook",), _HOOK),
        "count_hooks": Exercise(("count_hooks",), ()),
        "get_activation": Exercise(("get_activation",), _HOOK + (
            "course_utils.cam.recorded_forward", "course_utils.cam._recording_hook")),
    },
    "03_context_managers": {
        "hook_cm": Exercise(("Hook",), _HOOK),
        "hooked": Exercise(("hooked",), _HOOK),
    },
    "04_cam": {
        "location_scores": Exercise(("location_scores",), ("course_utils.cam.book_cam",)),
        "cat_and_dog_maps": Exercise(("cat_and_dog_maps",), ()),
        "logits_from_cam": Exercise(("logits_from_cam",), ()),
    },
    "05_gradcam": {
        "target_score": Exercise(("target_score",), _CLASS_SCORE),
        "HookBwd": Exercise(("HookBwd",), ("course_utils.hooks.HookBwd", "course_utils.hooks._HookBase")),
        "grad_cam_map": Exercise(("grad_cam_map",), _GRADCAM),
        "gradcam_matches_cam": Exercise(("gradcam_matches_cam",), ()),     # built on gradcam and cam
    },
    "06_inner_layers": {
        "every_stage": Exercise(("every_stage",), ()),
        "pointing_accuracy": Exercise(("pointing_accuracy",), (
            "course_utils.cam.pointing_game", "course_utils.cam.pointing_hits", "course_utils.cam._check_boxes")),
    },
    "07_keepdim": {
        "broadcast_shape": Exercise(("broadcast_shape",), ()),
        "gradcam_keepdim": Exercise(("gradcam_keepdim",), _GRADCAM + ("course_utils.cam.book_cam",)),
        "gradcam_index": Exercise(("gradcam_index",), _GRADCAM + ("course_utils.cam.book_cam",)),
        "gradcam_einsum": Exercise(("gradcam_einsum",), _GRADCAM + ("course_utils.cam.book_cam",)),
    },
    "08_any_model": {
        "find_layer": Exercise(("find_layer",), ()),
        "exit_model": Exercise(("exit_model",), ()),
        "pointing_per_layer": Exercise(("pointing_per_layer",), ("course_utils.evaluate.score_methods",)),
    },
    "09_questionnaire": {
        "q02_cam_layer": Exercise(("cam_layer",), ()),
        "q05_store_acts": Exercise(("StoreActs",), _HOOK),
        "q07_location_scores": Exercise(("location_scores",), ("course_utils.cam.book_cam",)),
        "q08_index_to_category": Exercise(("index_to_category",), ()),
        "q13_class_score": Exercise(("class_score",), _CLASS_SCORE),
    },
    "10_nlp": {
        "token_attributions": Exercise(("token_attributions",), ()),
        "top_words": Exercise(("top_words",), ()),
    },
    "11_trust": {
        "layercam_map": Exercise(("layercam_map",), (
            "course_utils.cam_variants.layercam", "course_utils.cam_variants.layercam_weights",
            "course_utils.cam.gradient_cam", "course_utils.cam.weighted_sum")),
        "spearman_rank": Exercise(("average_ranks", "spearman_rank"), (
            "course_utils.sanity.spearman", "course_utils.sanity.rank_with_ties")),
        "randomize_block": Exercise(("randomize_block",), (
            "course_utils.sanity.randomized_copy", "course_utils.sanity._reinit")),
        "deletion_auc_one": Exercise(("deletion_auc_one",), (
            "course_utils.faithfulness.deletion_auc", "course_utils.faithfulness.deletion_curve",
            "course_utils.faithfulness.curve_auc", "course_utils.faithfulness._curve",
            "course_utils.faithfulness.pixel_ranks")),
    },
}


def matching(dotted: str, references: tuple[str, ...] | frozenset[str]) -> str | None:
    """The reference `dotted` is (or is an attribute of, e.g. `HookBwd._store_grad`), or None."""
    return next((r for r in references if dotted == r or dotted.startswith(r + ".")), None)


def describe(reference: str) -> str:
    """The words of every reference flag (the static scan's and the examiner's)."""
    return f"uses the course's reference answer {reference} (review)"


# ----------------------------------------------------------------------------- course_utils, read as text
@dataclasses.dataclass(frozen=True)
class _Library:
    """What each course_utils module binds, read from its source without importing it (no torch here)."""
    modules: frozenset[str]
    imported: dict[str, tuple[str, str | None]]     # "module.name" -> (source module, its name; None: the module)
    defined: dict[str, frozenset[str]]              # module -> names it defines itself
    public: dict[str, tuple[str, ...]]              # module -> what `from module import *` binds


@functools.cache
def _library() -> _Library:
    """Every course_utils module's bindings, read once per process."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    files = {} if folder is None else {PACKAGE if f.stem == "__init__" else f"{PACKAGE}.{f.stem}": f for f in sorted(folder.glob("*.py"))}
    imported, defined, public = {}, {}, {}
    for module, file in files.items():
        tree = ast.parse(file.read_text())
        names: set[str] = set()
        for node in tree.body:
            _read_binding(node, module, imported, names, public)
        defined[module] = frozenset(names)
        bound_here = names | {key.rsplit(".", 1)[1] for key in imported if key.rsplit(".", 1)[0] == module}
        public.setdefault(module, tuple(sorted(n for n in bound_here if not n.startswith("_"))))
    return _Library(frozenset(files), imported, defined, public)


def _read_binding(node: ast.stmt, module: str, imported: dict, names: set[str], public: dict) -> None:
    """Record what one top-level statement of a course_utils module binds."""
    if isinstance(node, ast.ImportFrom):
        source = node.module or ""
        if node.level:
            source = PACKAGE + (f".{source}" if source else "")
        for alias in node.names:
            if alias.name != "*":
                imported[f"{module}.{alias.asname or alias.name}"] = (source, alias.name)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            imported[f"{module}.{bound}"] = (alias.name if alias.asname else bound, None)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
                if target.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                    public[module] = tuple(e.value for e in node.value.elts if isinstance(e, ast.Constant))


def lookup(module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
    """`getattr(module, name)` as Python would give it: ("module", name) or ("object", dotted), None outside."""
    library = _library()
    key = f"{module}.{name}"
    if key in library.imported and depth < 20:
        source, attr = library.imported[key]
        if not _ours(source):
            return None
        return ("module", source) if attr is None else _imported(source, attr, depth + 1)
    if name in library.defined.get(module, ()):
        return "object", key
    if key in library.modules:
        return "module", key
    return "object", key


def _imported(source: str, attr: str, depth: int) -> tuple[str, str] | None:
    """`from source import attr`: a submodule of that name, else the module's attribute."""
    if f"{source}.{attr}" in _library().modules and f"{source}.{attr}" not in _library().imported \
            and attr not in _library().defined.get(source, ()):
        return "module", f"{source}.{attr}"
    return lookup(source, attr, depth)


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def star_names(module: str) -> tuple[str, ...]:
    """The names `from module import *` binds (its `__all__`, else its public names)."""
    return _library().public.get(module, ())


# ----------------------------------------------------------------------------- reading the cells
@dataclasses.dataclass(frozen=True)
class _Value:
    """What the reader knows of a value: a course_utils thing it is, what its making used, a constant string."""
    ref: tuple[str, str] | None = None          # ("module"|"object"|"vars-module"|"vars-object", dotted)
    carries: frozenset[str] = frozenset()       # course_utils objects used to make it (a def's body, an expression)
    text: str | None = None

    def uses(self) -> frozenset[str]:
        return self.carries | ({self.ref[1]} if self.ref and self.ref[0] == "object" else set())


UNKNOWN = _Value()
MAX_TEXT = 10_000
_STR_METHODS = {"lower", "upper", "strip", "lstrip", "rstrip", "replace", "title", "capitalize", "swapcase",
                "removeprefix", "removesuffix", "casefold", "format", "zfill", "center", "ljust", "rjust"}
_IMPORTERS = {("importlib", "import_module"), ("builtins", "__import__")}


@dataclasses.dataclass
class _Found:
    """What one cell did: objects used (line, dotted), top-level bindings (line, name, uses), dynamic lookups."""
    used: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    bound: list[tuple[int, str, frozenset[str]]] = dataclasses.field(default_factory=list)
    dynamic: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    too_deep: list[int] = dataclasses.field(default_factory=list)


class _Reader(ast.NodeVisitor):
    """Follows a notebook's cells in order: which names hold course_utils objects, and what each cell uses."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, _Value]] = [{}]
        self.globals_declared: list[set[str]] = [set()]
        self.collecting: list[set[str]] = []
        self.found = _Found()
        self.line_offset: int | None = None          # inside exec("..."): every line is the exec call's

    # ------------------------------------------------------------------ cells
    def read(self, source: str) -> _Found:
        """Read one cell; what it used and bound (the names it binds stay known for the next cells)."""
        self.found = _Found()
        try:
            tree = _parse(source)
        except (RecursionError, MemoryError):  # past what Python itself can parse: a person looks
            tree, self.found.too_deep = None, [1]
        for statement in tree.body if tree is not None else ():
            try:
                self.visit(statement)
            except RecursionError:             # code nested past Python's own limit: a person looks
                self.found.too_deep.append(statement.lineno)
        return self.found

    # ------------------------------------------------------------------ names and scopes
    def _get(self, name: str) -> _Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return UNKNOWN

    def _bind(self, name: str, value: _Value, node: ast.AST) -> None:
        top = len(self.scopes) == 1 or name in self.globals_declared[-1]
        (self.scopes[0] if top else self.scopes[-1])[name] = value
        if top:
            self.found.bound.append((self._line(node), name, value.uses()))

    def _line(self, node: ast.AST) -> int:
        return self.line_offset or getattr(node, "lineno", 0)

    def _use(self, value: _Value, node: ast.AST) -> _Value:
        """Record that the code here uses `value`: its course_utils object, and what its making used."""
        ours = {dotted for dotted in value.uses() if _ours(dotted)}
        self.found.used.extend((self._line(node), dotted) for dotted in ours)
        for carried in self.collecting:
            carried |= ours
        return value

    # ------------------------------------------------------------------ expressions
    def value(self, node: ast.AST | None) -> _Value:
        """What an expression evaluates to, as far as course_utils is concerned (uses are recorded)."""
        if node is None:
            return UNKNOWN
        method = getattr(self, f"_value_{type(node).__name__}", None)
        if method is not None:
            return method(node)
        return self._children(node)

    def _children(self, node: ast.AST) -> _Value:
        """Any other expression: what its parts used (an unknown value built from them)."""
        carries: set[str] = set()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                carries |= self.value(child).uses()
            elif isinstance(child, (ast.comprehension, ast.keyword, ast.arguments)):
                carries |= self._children(child).uses()
        return _Value(None, frozenset(carries))

    def _value_Constant(self, node: ast.Constant) -> _Value:
        return _Value(text=node.value if isinstance(node.value, str) else None)

    def _value_Name(self, node: ast.Name) -> _Value:
        return self._use(self._get(node.id), node)

    def _value_Attribute(self, node: ast.Attribute) -> _Value:
        base = self.value(node.value)
        if node.attr == "__dict__" and base.ref:
            return _Value(("vars-" + base.ref[0], base.ref[1]), base.carries)
        if base.text is not None:
            return _Value(("str-method", node.attr), base.carries, base.text)
        return self._use(_attribute(base, node.attr), node)

    def _value_Subscript(self, node: ast.Subscript) -> _Value:
        base = self.value(node.value)
        key = self.value(node.slice)
        if base.ref and base.ref[0].startswith("vars-") and key.text is not None:
            return self._use(_attribute(_Value((base.ref[0][5:], base.ref[1])), key.text), node)
        if base.ref == ("object", "sys.modules") and key.text is not None and _ours(key.text):
            return _Value(("module", key.text))
        if base.ref and base.ref[0].startswith("vars-"):
            self._dynamic(node, base.ref[1])
        if base.text is not None:
            return _Value(None, base.carries, _slice(base.text, node.slice))
        return _Value(None, base.carries | key.uses())

    def _value_BinOp(self, node: ast.BinOp) -> _Value:
        left, right = self.value(node.left), self.value(node.right)
        return _Value(None, left.uses() | right.uses(), _fold_binop(node, left, right))

    def _value_JoinedStr(self, node: ast.JoinedStr) -> _Value:
        parts, carries = [], set()
        for part in node.values:
            inner = self.value(part.value if isinstance(part, ast.FormattedValue) else part)
            carries |= inner.uses()
            plain = isinstance(part, ast.Constant) or (part.conversion in (-1, 115) and part.format_spec is None)
            parts.append(inner.text if plain else None)
        text = "".join(parts) if all(p is not None for p in parts) else None
        return _Value(None, frozenset(carries), _bounded(text))

    def _value_Call(self, node: ast.Call) -> _Value:
        func = self.value(node.func)
        args = [self.value(a.value if isinstance(a, ast.Starred) else a) for a in node.args]
        keywords = {k.arg: self.value(k.value) for k in node.keywords}
        carries = func.carries.union(*(a.uses() for a in args), *(k.uses() for k in keywords.values()))
        if not (func.ref and func.ref[0] == "object" and _ours(func.ref[1])):
            carries |= func.uses()            # what a course_utils function returns is data, not the function
        special = self._special_call(node, func, args, keywords)
        if special is not None:
            return _Value(special.ref, special.carries | carries, special.text)
        return _Value(None, frozenset(carries), self._fold_call(node, func, args))

    def _special_call(self, node: ast.Call, func: _Value, args: list[_Value], keywords: dict) -> _Value | None:
        """getattr, vars, importlib.import_module, __import__, globals()[...], exec: followed, not guessed."""
        name = node.func.id if isinstance(node.func, ast.Name) and self._get(node.func.id) is UNKNOWN else None
        if name == "getattr" and len(args) >= 2:
            if args[1].text is not None:
                return self._use(_attribute(args[0], args[1].text), node)
            if args[0].ref and args[0].ref[0] == "module":
                self._dynamic(node, args[0].ref[1])
        if name == "vars" and len(args) == 1 and args[0].ref:
            return _Value(("vars-" + args[0].ref[0], args[0].ref[1]))
        dunder = name == "__import__" or func.ref == ("object", "builtins.__import__")
        if (dunder or func.ref == ("object", "importlib.import_module")) and args:
            return self._import_call(dunder, args, keywords)
        owner = _owner(func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if method == "get" and owner and owner[0].startswith("vars-") and args:
            if args[0].text is not None:
                return self._use(_attribute(_Value((owner[0][5:], owner[1])), args[0].text), node)
            self._dynamic(node, owner[1])
        if name == "globals" and not args:
            return _Value(("globals", "__main__"))
        if method == "update" and owner == ("globals", "__main__"):
            for key, value in keywords.items():
                if key:
                    self._bind(key, value, node)
        if name in ("exec", "eval") and args and args[0].text is not None:
            self._run_text(args[0].text, node)
        return None

    def _import_call(self, dunder: bool, args: list[_Value], keywords: dict) -> _Value | None:
        """import_module('course_utils.hooks') is that module; __import__ gives the package without a fromlist."""
        text = args[0].text
        if text is None:
            return None
        if not dunder and text.startswith(".") and len(args) > 1 and args[1].text:
            text = args[1].text + text if text != "." else args[1].text
        if not _ours(text):
            return None
        fromlist = len(args) > 3 or "fromlist" in keywords
        return _Value(("module", text if not dunder or fromlist else PACKAGE))

    def _fold_call(self, node: ast.Call, func: _Value, args: list[_Value]) -> str | None:
        """''.join([...]), 'ab'.upper(), chr(72), ''.join(reversed('...')) on constant strings."""
        if isinstance(node.func, ast.Name) and node.func.id == "chr" and len(node.args) == 1 and _is_int(node.args[0]):
            return chr(node.args[0].value) if 0 <= node.args[0].value < 0x110000 else None
        if not (func.ref and func.ref[0] == "str-method" and func.text is not None) or node.keywords:
            return None
        method, owner = func.ref[1], func.text
        if method == "join" and len(node.args) == 1:
            items = self._items(node.args[0])
            return _bounded(owner.join(items)) if items is not None else None
        values = [a.text if a.text is not None else (n.value if _is_int(n) else None) for a, n in zip(args, node.args)]
        if method not in _STR_METHODS or any(v is None for v in values):
            return None
        try:
            return _bounded(str(getattr(owner, method)(*values)))
        except (TypeError, ValueError, IndexError, KeyError):
            return None

    def _items(self, node: ast.AST) -> list[str] | None:
        """The strings a list/tuple of constants, a constant string or reversed(...) of one holds."""
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e).text for e in node.elts]
            return items if all(i is not None for i in items) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "reversed" and node.args:
            inner = self._items(node.args[0])
            return inner[::-1] if inner is not None else None
        text = self.value(node).text
        return list(text) if text is not None else None

    def _run_text(self, text: str, node: ast.AST) -> None:
        tree = _parse(text)
        if tree is None:
            return
        outer, self.line_offset = self.line_offset, self._line(node)
        try:
            for statement in tree.body:
                self.visit(statement)
        finally:
            self.line_offset = outer

    def _dynamic(self, node: ast.AST, where: str) -> None:
        if _ours(where):
            self.found.dynamic.append((self._line(node), where))

    def _value_Lambda(self, node: ast.Lambda) -> _Value:
        carries = self._children(node.args).uses()
        inner = self._in_function(node.args, lambda: self.value(node.body), set())
        return _Value(None, carries | inner)

    def _value_NamedExpr(self, node: ast.NamedExpr) -> _Value:
        value = self.value(node.value)
        self._assign(node.target, value, node)
        return value

    def _value_ListComp(self, node) -> _Value:
        return self._comprehension(node, [node.elt])

    _value_SetComp = _value_GeneratorExp = _value_ListComp

    def _value_DictComp(self, node: ast.DictComp) -> _Value:
        return self._comprehension(node, [node.key, node.value])

    def _comprehension(self, node, parts: list[ast.expr]) -> _Value:
        self.scopes.append({})
        self.globals_declared.append(set())
        try:
            carries: set[str] = set()
            for generator in node.generators:
                iterated = self.value(generator.iter)
                carries |= iterated.uses()
                self._assign(generator.target, _Value(None, iterated.uses()), generator)
                for condition in generator.ifs:
                    carries |= self.value(condition).uses()
            for part in parts:
                carries |= self.value(part).uses()
            return _Value(None, frozenset(carries))
        finally:
            self.scopes.pop()
            self.globals_declared.pop()

    # ------------------------------------------------------------------ statements
    def generic_visit(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
            elif isinstance(child, ast.AST):
                self.visit(child)

    def visit_Assign(self, node: ast.Assign) -> None:
        value = self.value(node.value)
        for target in node.targets:
            self._assign(target, value, node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.value(node.annotation)
        if node.value is not None:
            self._assign(node.target, self.value(node.value), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        value = self.value(node.value)
        if isinstance(node.target, ast.Name):
            before = self._get(node.target.id)
            self._bind(node.target.id, _Value(None, before.uses() | value.uses()), node)
        else:
            self.value(node.target)

    def _assign(self, target: ast.AST, value: _Value, node: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self._bind(target.id, value, node)
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = getattr(node, "value", None)
            items = values.elts if isinstance(values, (ast.Tuple, ast.List)) and len(values.elts) == len(
                target.elts) and not any(isinstance(e, ast.Starred) for e in target.elts) else None
            for i, element in enumerate(target.elts):
                part = self.value(items[i]) if items is not None else _Value(None, value.uses())
                self._assign(element.value if isinstance(element, ast.Starred) else element, part, node)
        elif isinstance(target, ast.Subscript):
            owner = self.value(target.value)
            key = self.value(target.slice)
            if owner.ref == ("globals", "__main__") and key.text is not None:
                self._bind(key.text, value, node)
        elif isinstance(target, ast.Attribute):
            self.value(target.value)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not _ours(alias.name):
                top = alias.name.split(".")[0]
                self._bind(alias.asname or top, _Value(("object", alias.name if alias.asname else top)), node)
                continue
            if alias.asname:
                value = _module_path(alias.name)
            else:
                value = _Value(("module", PACKAGE))
            self._bind(alias.asname or alias.name.split(".")[0], self._use(value, node), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not _ours(module):
            for alias in node.names:
                if alias.name != "*":
                    self._bind(alias.asname or alias.name, _Value(("object", f"{module}.{alias.name}")), node)
            return
        for alias in node.names:
            names = star_names(module) if alias.name == "*" else [alias.name]
            for name in names:
                found = _imported(module, name, 0)
                value = _Value(found) if found else UNKNOWN
                self._bind(alias.asname or name, self._use(value, node) if alias.name != "*" else value, node)

    def visit_FunctionDef(self, node) -> None:
        carries = set().union(*(self.value(d).uses() for d in node.decorator_list))
        carries |= self._children(node.args).uses()
        carries |= self.value(node.returns).uses()
        carries |= self._in_function(node.args, lambda: [self.visit(s) for s in node.body], _global_names(node))
        self._bind(node.name, _Value(None, frozenset(carries)), node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        carries: set[str] = set()
        for expression in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            carries |= self.value(expression).uses()
        self.collecting.append(carries)
        self.scopes.append({})
        self.globals_declared.append(set())
        try:
            for statement in node.body:
                self.visit(statement)
        finally:
            self.scopes.pop()
            self.globals_declared.pop()
            self.collecting.pop()
        self._bind(node.name, _Value(None, frozenset(carries)), node)

    def _in_function(self, arguments: ast.arguments, body, declared: set[str]) -> frozenset[str]:
        """Read a function's body in its own scope; the course_utils objects it uses."""
        carries: set[str] = set()
        params = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
        params += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
        self.collecting.append(carries)
        self.scopes.append({p: UNKNOWN for p in params})
        self.globals_declared.append(declared)
        try:
            body()
        finally:
            self.scopes.pop()
            self.globals_declared.pop()
            self.collecting.pop()
        return frozenset(carries)

    def visit_For(self, node) -> None:
        iterated = self.value(node.iter)
        self._assign(node.target, _Value(None, iterated.uses()), node)
        for statement in [*node.body, *node.orelse]:
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_With(self, node) -> None:
        for item in node.items:
            entered = self.value(item.context_expr)
            if item.optional_vars is not None:
                self._assign(item.optional_vars, _Value(None, entered.uses()), node)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncWith = visit_With

    def visit_Global(self, node: ast.Global) -> None:
        self.globals_declared[-1].update(node.names)


def _global_names(node) -> set[str]:
    """The names a function declares `global` (its assignments to them bind the notebook's names)."""
    return {n for s in ast.walk(node) if isinstance(s, ast.Global) for n in s.names}


def _owner(func: _Value) -> tuple[str, str] | None:
    """For `x.get(...)` / `x.update(...)`: what `x` was, kept on the method's value."""
    return func.ref[1:] if func.ref and func.ref[0] == "method" else None


def _attribute(base: _Value, name: str) -> _Value:
    """`base.name`, followed through course_utils's modules."""
    if not base.ref:
        return _Value(None, base.carries)
    kind, dotted = base.ref
    if kind == "module":
        return _Value(lookup(dotted, name), base.carries)
    if kind == "object" and _ours(dotted):
        return _Value(("object", f"{dotted}.{name}"), base.carries)
    if kind == "object" and dotted in ("importlib", "builtins") or (kind, dotted) == ("object", "sys"):
        return _Value(("object", f"{dotted}.{name}"), base.carries)
    if kind.startswith("vars-") or kind == "globals":
        return _Value(("method", kind, dotted), base.carries)
    return _Value(None, base.carries)


def _module_path(name: str) -> _Value:
    """`import a.b.c as x`: Python takes getattr along the path (a name bound in a package wins)."""
    parts = name.split(".")
    value = _Value(("module", parts[0]))
    for part in parts[1:]:
        value = _attribute(value, part)
    return value


def _parse(source: str) -> ast.Module | None:
    """A cell's code (IPython syntax allowed), numbered as the cell shows it: IPython drops leading blank lines."""
    from IPython.core.inputtransformer2 import TransformerManager
    try:
        code = TransformerManager().transform_cell(source)
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    return ast.increment_lineno(tree, _blank_head(source) - _blank_head(code))


def _blank_head(text: str) -> int:
    lines = text.splitlines()
    return next((i for i, line in enumerate(lines) if line.strip()), len(lines))


def _bounded(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_TEXT else None


def _fold_binop(node: ast.BinOp, left: _Value, right: _Value) -> str | None:
    """'Hook' + 'Bwd', 'ab' * 2, '%s%s' % ('Hook', 'Bwd') on constant strings."""
    if isinstance(node.op, ast.Add) and left.text is not None and right.text is not None:
        return _bounded(left.text + right.text)
    if isinstance(node.op, ast.Mult) and left.text is not None and isinstance(node.right, ast.Constant) \
            and type(node.right.value) is int and 0 <= node.right.value * len(left.text) <= MAX_TEXT:
        return left.text * node.right.value
    if isinstance(node.op, ast.Mod) and left.text is not None:
        parts = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        texts = [p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)]
        if len(texts) == len(parts):
            try:
                return _bounded(left.text % tuple(texts))
            except (TypeError, ValueError):
                return None
    return None


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= MAX_TEXT


def _slice(text: str, index: ast.AST) -> str | None:
    """'dwBkooH'[::-1]: a constant string cut by constant numbers."""
    def number(n):
        if n is None:
            return None
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub) and _is_int(n.operand):
            return -n.operand.value
        if _is_int(n):
            return n.value
        raise ValueError
    try:
        if isinstance(index, ast.Slice):
            return text[slice(number(index.lower), number(index.upper), number(index.step))]
        return text[number(index)]
    except (ValueError, IndexError, TypeError):
        return None


# ----------------------------------------------------------------------------- the static tripwire
def reference_flags(lesson: str, assembled: Any) -> list[str]:
    """Flags for review: the student's cells of `assembled` (an `assemble.Assembled`) that use the course's
    reference answer of one of the lesson's exercises. Lesson cells are read for their names only."""
    exercises = REFERENCES.get(lesson)
    if not exercises:
        return []
    answer_of = {name: grade_id for grade_id, ex in exercises.items() for name in ex.answers}
    student = set(assembled.student_cells)
    reader, flags = _Reader(), []
    for index, cell in enumerate(assembled.notebook.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or (meta.get("grade") and not meta.get("solution")):
            continue                                  # tests never run in the student's namespace
        found = reader.read(cell.source)
        if index in student:
            label = meta.get("grade_id") or f"#{index + 1}"
            own = exercises.get(meta.get("grade_id")) if meta.get("solution") else None
            flags += [f"cell '{label}': line {line}: {why}" for line, why in _findings(found, own, exercises, answer_of)]
    return flags


def _findings(found: _Found, own: Exercise | None, exercises: dict[str, Exercise],
              answer_of: dict[str, str]) -> list[tuple[int, str]]:
    """(line, why) for one student cell, each once, in line order."""
    out: set[tuple[int, str]] = set()
    if own is not None:
        out |= {(line, describe(hit)) for line, dotted in found.used if (hit := matching(dotted, own.references))}
    for line, name, uses in found.bound:
        if name in answer_of and not (own and name in own.answers):      # there, every use is flagged already
            refs = exercises[answer_of[name]].references
            out |= {(line, describe(hit)) for dotted in uses if (hit := matching(dotted, refs))}
    out |= {(line, f"looks up a name of {where} built at run time (review)") for line, where in found.dynamic}
    out |= {(line, "is nested too deeply to check for the course's reference answers (review)")
            for line in found.too_deep}
    return sorted(out)


def scan_lesson_cells(lesson: str, cells: list[tuple[str, str, bool]]) -> list[str]:
    """The same flags for plain cells (label, source, written by the student) of `lesson`, in order; a
    label that is one of the lesson's grade_ids is that exercise's answer cell."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    student = []
    for i, (label, source, own) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        if label in REFERENCES.get(lesson, {}):
            cell.metadata["nbgrader"] = {"grade_id": label, "solution": True}
        nb.cells.append(cell)
        if own:
            student.append(i)
    return reference_flags(lesson, _Cells(nb, student))


@dataclasses.dataclass
class _Cells:
    notebook: Any
    student_cells: list[int]


# ----------------------------------------------------------------------------- the examiner's tripwire
MAX_WHERE = 64


class Watch:
    """In the examiner: which handles came from the notebook's answers, and whether one is the course's own.

    A handle counts as an exercise's when the test asked for one of its answer names, or asked
    something of (or with) a handle that already counts. Its `where` (module:qualname along the
    class's MRO, as the student's process reports it) is read up to the first course_utils entry:
    a listed object, or an instance or subclass of one, is noted. The student's process says where;
    a lie hides the flag, it cannot clear one.
    """

    def __init__(self, lesson: str):
        self.exercises = REFERENCES.get(lesson, {})
        self.answer_of = {name: gid for gid, ex in self.exercises.items() for name in ex.answers}
        self.came_from: dict[int, str] = {}
        self.flags: list[str] = []

    def received(self, request: dict, encoded: Any) -> None:
        """Note the handles of one answer (the request that asked for it, the answer as it travelled)."""
        try:
            exercise = self._exercise_of(request)
            for handle, where in _handles_in(encoded) if exercise is not None else ():
                self.came_from.setdefault(handle, exercise)
                hit = _listed(where, self.exercises[exercise].references)
                if hit and describe(hit) not in self.flags:
                    self.flags.append(describe(hit))
        except Exception:               # a tripwire never costs a test its verdict
            pass

    def take(self) -> list[str]:
        """The flags noted since the last call."""
        flags, self.flags = self.flags, []
        return flags

    def _exercise_of(self, request: dict) -> str | None:
        if request.get("op") == "get" and request.get("name") in self.answer_of:
            return self.answer_of[request["name"]]
        if request.get("of") in self.came_from:
            return self.came_from[request["of"]]
        return next((self.came_from[h] for h, _ in _handles_in(request) if h in self.came_from), None)


def _handles_in(encoded: Any, depth: int = 0) -> Iterator[tuple[int, list]]:
    """(handle, where) of every handle in an encoded value."""
    if depth > 40:
        return
    if type(encoded) is dict:
        if encoded.get("$") == "ref" and type(encoded.get("id")) is int:
            where = encoded.get("where")
            yield encoded["id"], where if type(where) is list else []
            return
        for value in encoded.values():
            yield from _handles_in(value, depth + 1)
    elif type(encoded) is list:
        for value in encoded:
            yield from _handles_in(value, depth + 1)


def _listed(where: list, references: tuple[str, ...]) -> str | None:
    """The reference the first course_utils class or function of `where` is, if it is listed."""
    for entry in where[:MAX_WHERE]:
        if type(entry) is not str:
            return None
        module, _, qualname = entry.partition(":")
        if _ours(module):
            return matching(f"{module}.{qualname}", references)
    return None
