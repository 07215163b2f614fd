"""Issue 24 item 5: every error a user can meet is one line that states the problem AND names the fix.

A static check over the package source (``ast``, nothing is imported or run): the message of every
``ConfigError`` / ``MissingWeightsError`` / ``CheckpointError`` (and of every subclass defined in the
package: ``KeyLayoutError``, ``RunLockedError``, ...) must carry a *fix cue*: an imperative that says
what to do (``set``, ``pass``, ``run``, ``delete``, ...) or the value that is wanted (``expected``,
``must``, ``valid``, ``one of:``). The check is lexical, so the cue list holds only words that name an
action or the wanted value; "X is bad" or "X not found at P" fails.

Formatted parts are followed where the fix lives in them: a local variable (every value it is assigned
must carry a cue), a parameter (its default and every argument passed at a call site in the package),
a package function (every value it returns), and the caught error of ``except ConfigError as err``
(that message is checked where it is raised). Anything else counts as no text.

Messages with no fix to give are in :data:`NO_FIX`, keyed by a piece of their text, each with the
reason; an entry that matches no message fails, so the list cannot go stale.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "repae"

#: The errors a user meets as one line (``repae`` prints them with exit code 2); subclasses are found.
ROOTS = {"ConfigError", "MissingWeightsError", "CheckpointError"}

#: Words that name what to do or what is wanted. Left out: words that in these messages mostly name
#: things ("sample", "list", "make"); a message must say the action, not mention a word that could be one.
CUES = (
    "use", "set", "pass", "give", "choose", "pick", "run", "rerun", "delete", "remove", "drop", "place", "put",
    "convert", "install", "reinstall", "lower", "raise", "free", "add", "store", "save", "re-save", "write",
    "start", "resume", "check", "build", "rebuild", "fix", "change", "point", "train", "retrain", "download",
    "leave", "wait", "stop", "crop", "replace", "regenerate", "break", "ask", "cache", "load",
    "e.g.", "expected", "expects", "must", "valid", "one of:",
)
#: A cue as a whole word: not part of a dotted config key (``train.recipe``) or a flag (``--use-mean``).
CUE_RX = re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(c) for c in CUES) + r")(?![\w-]|\.\w)", re.I)

#: Cue words where they name a thing ("a run folder", "in use"): removed before the cues are looked for.
NOUNS_RX = re.compile(r"\brun (?:folders?|dir)\b|\bin use\b", re.I)

#: Stands for a formatted part whose every value carries a cue.
FIX = "\x01fix\x01"

#: message substring -> why no fix can be named. Each entry must match at least one message.
NO_FIX: dict[str, str] = {
}


def _cued(text: str) -> bool:
    return FIX in text or CUE_RX.search(NOUNS_RX.sub(" ", text)) is not None


class _Package:
    """The parsed package: modules, functions by name, enclosing functions, the error family."""

    def __init__(self, sources: dict[str, str]):
        self.trees = {name: ast.parse(src) for name, src in sources.items()}
        self.parent: dict[ast.AST, ast.AST] = {}
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        self.constants: dict[str, ast.expr] = {}  # module-level NAME = value
        self.calls: dict[str, list[ast.Call]] = {}  # callee name -> calls
        self.module_of: dict[ast.AST, str] = {}  # call -> module
        for module, tree in self.trees.items():
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.Call):
                    self.calls.setdefault(_name(node.func), []).append(node)
                    self.module_of[node] = module
            for stmt in tree.body:
                if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                    for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                        if isinstance(target, ast.Name):
                            self.constants[target.id] = stmt.value
        self.notes: list[str] = []  # parameters given a value without a fix (found while reading messages)
        self.family = set(ROOTS)
        grown = True
        while grown:
            grown = False
            for tree in self.trees.values():
                for node in ast.walk(tree):
                    if isinstance(node, ast.ClassDef) and node.name not in self.family and any(
                            _name(b) in self.family for b in node.bases):
                        self.family.add(node.name)
                        grown = True

    def enclosing(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    def error_calls(self):
        """``(module, line, call)`` for every construction of an error of the family with arguments."""
        for name, tree in sorted(self.trees.items()):
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _name(node.func) in self.family and node.args:
                    yield name, node.lineno, node

    def message(self, call: ast.Call) -> str:
        return " ".join(self.text(a, depth=0) for a in call.args)

    # --- the text of an expression -----------------------------------------------------------------

    def text(self, node: ast.AST, depth: int) -> str:
        if depth > 4:
            return ""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(self.text(v, depth) for v in node.values)
        if isinstance(node, ast.FormattedValue):
            return self.text(node.value, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.text(node.left, depth) + self.text(node.right, depth)
        if isinstance(node, ast.IfExp):  # either branch may be the one shown: the fix is in one of them
            return self.text(node.body, depth) + " " + self.text(node.orelse, depth)
        if isinstance(node, ast.Name):
            return self._name_text(node, depth)
        if isinstance(node, ast.Call):
            return self._call_text(node, depth)
        return ""

    def _all_cued(self, values: list[tuple[ast.AST, int]]) -> str:
        texts = [self.text(v, d) for v, d in values]
        return FIX if texts and all(_cued(t) for t in texts) else ""

    def _name_text(self, node: ast.Name, depth: int) -> str:
        func = self.enclosing(node)
        if func is not None:
            for sub in ast.walk(func):  # `except ConfigError as err: raise ConfigError(f"{path}: {err}")`
                if isinstance(sub, ast.ExceptHandler) and sub.name == node.id and sub.type is not None:
                    caught = sub.type.elts if isinstance(sub.type, ast.Tuple) else [sub.type]
                    if all(_name(c) in self.family for c in caught):
                        return FIX
            assigned = [(sub.value, depth + 1) for sub in ast.walk(func) if isinstance(sub, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == node.id for t in sub.targets)
                        and not (isinstance(sub.value, ast.Constant) and sub.value.value is None)]
            if assigned:
                return self._all_cued(assigned)
            values = self._parameter_values(func, node.id, depth + 1)
            if values is not None:
                cued = [_cued(self.text(value, d)) for value, d in values]
                if any(cued):  # a parameter that carries the fix: name the arguments without one (not the
                    # ones that only pass it on)
                    self.notes += [f"{func.name}({node.id}=...) is given {ast.unparse(value)} at "
                                   f"{self.module_of.get(value, '?')}:{value.lineno}"
                                   for (value, _), ok in zip(values, cued) if not ok and not isinstance(value, ast.Name)]
                return FIX if values and all(cued) else ""
        value = self.constants.get(node.id)
        return self.text(value, depth + 1) if value is not None else ""

    def _parameter_values(self, func, param: str, depth: int) -> list[tuple[ast.AST, int]] | None:
        """The default of parameter ``param`` of ``func`` and every argument given for it in the package
        (None when ``param`` is no parameter of ``func``)."""
        args = func.args
        positional = [a.arg for a in args.posonlyargs + args.args]
        if param not in positional and param not in [a.arg for a in args.kwonlyargs]:
            return None
        values: list[tuple[ast.AST, int]] = []
        if param in positional:
            index = positional.index(param)
            defaults = dict(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            if param in defaults:
                values.append((defaults[param], depth))
        else:
            index = None
            default = args.kw_defaults[[a.arg for a in args.kwonlyargs].index(param)]
            if default is not None:
                values.append((default, depth))
        offset = 1 if positional[:1] in (["self"], ["cls"]) else 0
        for call in self.calls.get(func.name, []):
            given = [k.value for k in call.keywords if k.arg == param]
            if not given and index is not None and 0 <= index - offset < len(call.args):  # self itself: no arg
                given = [call.args[index - offset]]
            values += [(g, depth) for g in given]
            self.module_of.update((g, self.module_of[call]) for g in given)
        return values

    def _call_text(self, node: ast.Call, depth: int) -> str:
        name = _name(node.func)
        if name in self.family:
            return self.message(node)
        if name == "str" and node.args:
            return self.text(node.args[0], depth + 1)
        returns = [(r.value, depth + 1) for f in self.functions.get(name, []) for r in ast.walk(f)
                   if isinstance(r, ast.Return) and r.value is not None]
        return self._all_cued(returns)


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")


def _package() -> _Package:
    return _Package({str(p.relative_to(SRC)): p.read_text() for p in sorted(SRC.rglob("*.py"))})


def _without_fix(pkg: _Package) -> list[tuple[str, int, str, list[str]]]:
    """``(module, line, message, notes)`` of every message without a cue; the notes name the arguments
    without a fix that a parameter of the message was given."""
    out = []
    for module, line, call in pkg.error_calls():
        pkg.notes = []
        if not _cued(msg := pkg.message(call)):
            out.append((module, line, msg, sorted(set(pkg.notes))))
    return out


def test_every_error_message_names_the_fix():
    pkg = _package()
    assert {"KeyLayoutError", "RunLockedError", "MissingCheckpointError", "BadImageError"} <= pkg.family
    assert sum(1 for _ in pkg.error_calls()) > 250  # the walk sees the whole package
    bad = [f"{module}:{line}: {msg!r}" + "".join(f"\n    where {n}" for n in notes)
           for module, line, msg, notes in _without_fix(pkg) if not any(key in msg for key in NO_FIX)]
    assert not bad, ("error messages that state the problem without the fix (add what to set / pass / run, "
                     "or list them in NO_FIX with the reason):\n" + "\n".join(bad))


def test_no_fix_allowlist_is_current():
    pkg = _package()
    messages = [pkg.message(call) for _, _, call in pkg.error_calls()]
    stale = [key for key in NO_FIX if not any(key in m for m in messages)]
    assert not stale, f"NO_FIX entries that match no message any more: {stale}"


def test_the_check_fails_on_a_message_without_a_fix():
    src = '''
from repae.errors import ConfigError, MissingWeightsError

class ShapeError(ConfigError):
    pass

DEFAULT = "set data.resolution to a multiple of 16"

def bare(x):
    raise ConfigError(f"resolution {x} is not supported")

def wrong_found(x):
    raise ShapeError(f"{x} not found")

def missing(p):
    raise MissingWeightsError(f"weights not found at {p}", f"{p}")

def fixed(x, fix=DEFAULT):
    raise ConfigError(f"resolution {x} is not supported; {fix}")

def caller_bad():
    fixed(3, fix="it is wrong")

def named(x):
    raise ConfigError(f"resolution {x} is not supported; set data.resolution=256")

def via_local(x):
    hint = "pass --resolution 256" if x else "use the default"
    raise ConfigError(f"bad {x}; {hint}")

def wrapped(p):
    try:
        named(p)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from None

def key_is_no_cue(x):
    raise ConfigError(f"train.resume={x} and data.cache={x} clash")

def noun_is_no_cue(x):
    raise ConfigError(f"{x} is not a run folder and the lock is in use")
'''
    pkg = _Package({"m.py": src})
    flagged = {pkg.enclosing(call).name for _, _, call in pkg.error_calls() if not _cued(pkg.message(call))}
    assert [n for *_, notes in _without_fix(pkg) for n in notes] == ["fixed(fix=...) is given 'it is wrong' at m.py:22"]
    # `fixed` fails because one call site passes a `fix` that names no fix
    assert flagged == {"bare", "wrong_found", "missing", "fixed", "key_is_no_cue", "noun_is_no_cue"}, flagged
    pkg = _Package({"m.py": src.replace('fix="it is wrong"', 'fix="lower it"')})
    flagged = {pkg.enclosing(call).name for _, _, call in pkg.error_calls() if not _cued(pkg.message(call))}
    assert "fixed" not in flagged and "via_local" not in flagged and "wrapped" not in flagged
