"""Inspect a ``.pt2`` archive before ``torch.export.load`` opens it.

Why this exists: ``torch.export.load`` is not safe on untrusted files (torch 2.14.1). Reading the
loader (``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``) and trying
crafted archives shows it runs code from the file when:

- a weights/constants config entry is marked ``use_pickle`` (a load with ``weights_only=False``, which unpickles),
  a legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` file is present, or a
  constant is a custom object (``custom_obj_*`` / ``opaque_obj_*``: ``pickle.loads``);
- the example inputs do not load with ``weights_only=True`` (it silently retries with ``False``);
- the archive carries AOTInductor artefacts (a shared library it ``dlopen`` s), or is laid out like
  the pre-2.8 format (a top-level ``version`` entry), whose reader unpickles state dicts;
- ``models/<model>.json`` holds a symbolic-shape expression (it is parsed with ``sympy.sympify``,
  which ``eval`` s), a guard (``guards_code`` is ``exec`` 'd into the module), or a name or FQN that
  FX pastes into the Python source it generates and compiles;
- a graph node's ``target``, or an ``as_operator`` argument, names any callable under ``torch``,
  ``_operator`` or ``math`` (``torch.serialization.os.makedirs`` resolves): the loader puts it into
  the graph as given, and the module calls it when it runs. Today torch's verifier happens to
  stop such a node before it runs; the guard does not rely on that.

So the check is an allowlist, not a blocklist: every entry must be one torch.export.save writes
(JSON, raw tensor bytes, example inputs that load with ``weights_only=True``), nothing may be
marked for unpickling, and every string from ``model.json`` that reaches ``eval``/``exec``/codegen
must parse as the narrow grammar torch itself emits, and every operator the graph names must be
one torch.export emits for ordinary models. Anything else is refused with an InputError naming the
file, the entry, what was expected and what was found. Raw tensor entries are not sniffed for pickle
headers: with ``use_pickle`` refused, torch only reinterprets their bytes (a float32 payload may
legitimately start with 0x80).
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import NoReturn

import torch

from ..core.errors import InputError

__all__ = ["check_pt2_archive"]

_REFUSED = ("{path}: refused to load: {reason}; expected a torch.export.save archive holding only JSON, "
            "raw tensor bytes and example inputs that load with weights_only=True (torch.export.load would "
            "run code from this one; re-export the model with torch.export.save where you trust it)")

# Entries torch.export.save writes (names relative to the archive's single top-level folder). ASCII
# patterns only: a name must mean the same bytes to Python's zip reader and to torch's.
_FIXED_ENTRIES = frozenset({"archive_format", "archive_version", "byteorder", ".data/version",
                            ".data/serialization_id"})
_MODEL_JSON = re.compile(r"models/(\w+)\.json", re.ASCII)
_WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
_ALLOWED = [re.compile(p, re.ASCII) for p in (
    r"models/\w+\.json", r"data/weights/\w+_weights_config\.json", r"data/constants/\w+_constants_config\.json",
    r"data/weights/weight_\d+", r"data/constants/tensor_\d+", r"data/sample_inputs/\w+\.pt", r"extra/[^/].*",
)]
# Known entries torch would execute or unpickle, with the reason shown to the user.
_DANGEROUS = [
    (re.compile(r"data/(weights|constants)/\w+\.pt", re.ASCII),
     "a legacy weights/constants file, which torch unpickles"),
    (re.compile(r"data/constants/(custom_obj|opaque_obj)_.*"), "a custom-object constant, which torch unpickles"),
    (re.compile(r"data/aotinductor/.*"), "AOTInductor compiled code, which torch loads as a shared library"),
    (re.compile(r".*\.pkl"), "a pickled payload"),
]

# What a graph may call. Measured on torch 2.14.1 exports (eval and training mode, dynamic batch, also
# after run_decompositions) of conv/BatchNorm/dropout/linear/LayerNorm/MultiheadAttention/SDPA models,
# torchvision ResNet, MobileNetV3, EfficientNet, ConvNeXt, Swin and ViT, torch.cond, torch.no_grad and
# autocast regions: aten overloads, the symbolic-shape arithmetic below, and three higher-order ops.
# prims overloads (decompositions) and torch's other pure control-flow / dtype operators are allowed too.
_OP_OVERLOAD = re.compile(r"torch\.ops\.(aten|prims)\.(\w+)\.(\w+)", re.ASCII)
_HIGHER_ORDER = frozenset(f"torch.ops.higher_order.{name}" for name in (
    "cond", "while_loop", "map_impl", "scan", "associative_scan", "wrap_with_set_grad_enabled",
    "wrap_with_autocast", "invoke_subgraph", "out_dtype"))
# torch's serializer writes its symbolic-shape operators (_SYM_OPS) under these names; getitem for tuples.
_SYM_OPERATORS = frozenset({
    *(f"_operator.{name}" for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
                                       "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "lshift", "rshift",
                                       "getitem")),
    "math.trunc", "torch.sym_int", "torch.sym_float", "torch.sym_ite", "torch.sym_max", "torch.sym_min",
    "torch.sym_not", "torch._sym_sqrt",
})
_OPERATORS_EXPECTED = ("torch.ops.aten / torch.ops.prims overloads, torch.ops.higher_order."
                       "{cond, while_loop, map_impl, scan, associative_scan, wrap_with_set_grad_enabled, "
                       "wrap_with_autocast, invoke_subgraph, out_dtype} or symbolic-shape arithmetic")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A dotted attribute path as torch writes it: one segment per submodule name, and nn.Module accepts any
# name without a '.' (torchvision's RegNet names blocks 'block1-0'). FX generates code for a segment
# that is not an identifier as getattr(self, "<segment>"), a double-quoted string literal, so a quote,
# a backslash or a control character could end that literal and inject code: those are refused, so is
# whitespace (no torch or torchvision name holds any). FQNs never become file paths (path_name does, and
# must be weight_<n> / tensor_<n>), so '/' and '..' reach no file system here.
_FQN_SEGMENT = r"[^.\s\"'\\\x00-\x1f\x7f]+"
_FQN = re.compile(rf"{_FQN_SEGMENT}(\.{_FQN_SEGMENT})*(@\d+)?")
_FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name",
                       "fqn", "user_input_name"})
_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})

# sympy constructors and torch's symbolic-shape functions: the calls torch writes into expressions.
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "floor", "ceiling", "sqrt", "Piecewise",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
})
# Guards look like "L['x'].size()[0] >= 2": only these calls may appear in them.
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_CALLS = _SYMPY_CALLS | {"abs", "min", "max", "int", "float", "round"}
_MATH_CALLS = frozenset({"floor", "ceil", "trunc", "sqrt", "log2", "pow"})
_ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop,
               ast.boolop, ast.cmpop, ast.Load, ast.keyword)


def check_pt2_archive(data: bytes, *, name: str) -> None:
    """Raise InputError unless ``data`` is a ``.pt2`` archive torch can load without running its code.

    Takes the archive's bytes, not a path, so the caller hands torch exactly what was checked.
    ``name`` (the file) is what messages cite.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _Inspector(name, zf).run()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, UnicodeDecodeError) as err:
        # RuntimeError: zipfile's word for an encrypted entry; UnicodeDecodeError: an entry name flagged
        # UTF-8 that is not (zipfile decodes names as it lists or opens them)
        raise InputError(f"{name}: expected a .pt2 zip archive; found a corrupt, truncated or encrypted zip "
                         f"({err})") from err


class _Inspector:
    """One pass over one archive; ``run`` raises at the first problem."""

    def __init__(self, path: str, zf: zipfile.ZipFile):
        self.path, self.zf = path, zf
        self.root = ""
        self.names: set[str] = set()         # entry names relative to the root folder

    def refuse(self, reason: str) -> NoReturn:
        raise InputError(_REFUSED.format(path=self.path, reason=reason))

    def run(self) -> None:
        self._read_layout()
        for rel in sorted(self.names):
            self._check_entry(rel)
        if self._read("archive_format") != b"pt2":
            self.refuse("archive_format is not 'pt2'")
        models = [m.group(1) for rel in self.names if (m := _MODEL_JSON.fullmatch(rel))]
        if not models:
            self.refuse("no models/<name>.json entry was found")
        for model in models:
            self._check_payload_config(_WEIGHTS_CONFIG.format(model), "data/weights/", r"weight_\d+", "weight")
            self._check_payload_config(_CONSTANTS_CONFIG.format(model), "data/constants/", r"tensor_\d+", "constant")
            self._check_sample_inputs(_SAMPLE_INPUTS.format(model))
            self._check_program(f"models/{model}.json")

    def _read_layout(self) -> None:
        infos = [i for i in self.zf.infolist() if not i.filename.endswith("/")]
        full = [i.filename for i in infos]
        if len(set(full)) != len(full):
            # Python's zipfile reads the last of two same-named entries, torch's reader may take the
            # first: what we check must be what torch loads.
            dup = sorted({n for n in full if full.count(n) > 1})
            self.refuse(f"duplicate entries {dup[:3]}")
        roots = {n.split("/", 1)[0] for n in full}
        if len(roots) != 1 or any("/" not in n for n in full):
            self.refuse(f"expected every entry under one top-level folder; found top-level names {sorted(roots)[:5]}")
        self.root = roots.pop() + "/"
        self.names = {n[len(self.root):] for n in full}

    def _check_entry(self, rel: str) -> None:
        if rel in _FIXED_ENTRIES or any(p.fullmatch(rel) for p in _ALLOWED):
            return
        for pattern, reason in _DANGEROUS:
            if pattern.fullmatch(rel):
                self.refuse(f"entry {rel!r} is {reason}")
        self.refuse(f"unexpected entry {rel!r}")

    def _read(self, rel: str) -> bytes:
        if rel not in self.names:
            self.refuse(f"entry {rel!r} is missing")
        return self.zf.read(self.root + rel)

    def _read_json(self, rel: str) -> object:
        data = self._read(rel)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            found = "pickle data" if data[:1] == b"\x80" else f"{data[:16]!r}"
            self.refuse(f"entry {rel!r} should be JSON; found {found}")

    def _check_payload_config(self, rel: str, folder: str, raw_name: str, what: str) -> None:
        doc = self._read_json(rel)
        config = doc.get("config") if isinstance(doc, dict) else None
        if not isinstance(config, dict):
            self.refuse(f"{rel!r} should be {{\"config\": {{...}}}}; found {str(doc)[:80]}")
        for fqn, meta in config.items():
            if not _FQN.fullmatch(fqn) or not isinstance(meta, dict):
                self.refuse(f"{rel!r} has a malformed entry {fqn!r}")
            path_name = str(meta.get("path_name", ""))
            if path_name.startswith(("custom_obj_", "opaque_obj_")):
                self.refuse(f"{what} {fqn!r} is a custom-object constant ({path_name}), which torch unpickles")
            if meta.get("use_pickle"):
                self.refuse(f"{what} {fqn!r} is marked use_pickle in {rel!r} (torch would unpickle {path_name!r})")
            if not re.fullmatch(raw_name, path_name) or folder + path_name not in self.names:
                self.refuse(f"{what} {fqn!r} points at {path_name!r}; expected an existing {folder}{raw_name} entry")
            if not isinstance(meta.get("tensor_meta"), dict):
                self.refuse(f"{what} {fqn!r} has no tensor_meta")

    def _check_sample_inputs(self, rel: str) -> None:
        data = self._read(rel)
        try:
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any failure makes torch retry with weights_only=False
            culprit = re.search(r"GLOBAL [\w.]+", str(err))
            found = f"they reference {culprit.group(0)}" if culprit else f"{type(err).__name__}"
            self.refuse(f"example inputs {rel!r} do not load with weights_only=True ({found})")

    def _check_program(self, rel: str) -> None:
        doc = self._read_json(rel)
        if not isinstance(doc, dict):
            self.refuse(f"{rel!r} should be a JSON object")
        for key, value in _walk(doc):
            problem = _check_field(key, value)
            if problem:
                self.refuse(f"{rel!r}: {problem}")
        for node_name, what, target in _called_operators(doc.get("graph_module")):
            if not _is_allowed_operator(target, as_argument=what == "argument"):
                call = "calls" if what == "target" else "passes the operator"
                self.refuse(f"{rel!r}: graph node {node_name!r} {call} {str(target)[:120]!r}; expected only "
                            f"{'torch.ops.aten / torch.ops.prims overloads' if what == 'argument' else _OPERATORS_EXPECTED}")
        constraints, guards = doc.get("range_constraints") or {}, doc.get("guards_code") or []
        if not isinstance(constraints, dict) or not isinstance(guards, list):
            self.refuse(f"{rel!r}: range_constraints should be an object and guards_code a list")
        for expr in constraints:
            if not _is_sympy_expr(expr):
                self.refuse(f"{rel!r}: range constraint {expr[:120]!r} is not a symbolic-shape expression")
        for guard in guards:
            if not isinstance(guard, str) or not _is_guard(guard):
                self.refuse(f"{rel!r}: guard {str(guard)[:120]!r} is not a shape comparison")


def _walk(node: object) -> Iterator[tuple[str, object]]:
    """Every (key, value) pair of every object nested in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _called_operators(graph_module: object) -> Iterator[tuple[str, str, object]]:
    """(node name, "target" | "argument", operator name) for every operator a serialised graph names.

    Walks every node of the graph and of the subgraphs nested in its arguments (control-flow branches):
    a node's ``target``, and every ``as_operator`` argument anywhere in its inputs.
    """
    stack = [graph_module]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if "target" in item:                               # a Node: the only object with a target
                name = item.get("name") or "?"
                yield str(name)[:80], "target", item["target"]
                for key, value in _walk(item.get("inputs")):
                    if key == "as_operator":
                        yield str(name)[:80], "argument", value
            stack.extend(item.values())


def _is_allowed_operator(target: object, *, as_argument: bool) -> bool:
    """True if ``target`` names an operator torch.export emits for ordinary models.

    aten/prims names must resolve to a real OpOverload; nothing else is looked up.
    """
    if not isinstance(target, str):
        return False
    match = _OP_OVERLOAD.fullmatch(target)
    if match:
        namespace, op, overload = match.groups()
        try:
            resolved = getattr(getattr(getattr(torch.ops, namespace), op), overload)
        except (AttributeError, RuntimeError):
            return False
        return isinstance(resolved, torch._ops.OpOverload)
    return not as_argument and (target in _HIGHER_ORDER or target in _SYM_OPERATORS)


def _check_field(key: str, value: object) -> str | None:
    """What is wrong with one field of ``model.json`` (None if nothing)."""
    if key in ("name", "as_name") and isinstance(value, str) and value and not _IDENTIFIER.fullmatch(value):
        return f"name {value[:120]!r} is not a Python identifier"
    if key in _FQN_KEYS and isinstance(value, str) and value and not _FQN.fullmatch(value):
        return f"{key} {value[:120]!r} is not a dotted attribute path"
    if key == "forward_arg_names" and not all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in value or []):
        return f"forward_arg_names {str(value)[:120]} are not Python identifiers"
    if key == "expr_str" and not (isinstance(value, str) and _is_sympy_expr(value)):
        return f"expression {str(value)[:120]!r} is not a symbolic-shape expression"
    if key in ("in_spec", "out_spec") and isinstance(value, str) and not _is_plain_spec(value):
        return f"{key} {value[:120]!r} is not a tuple/list/dict structure"
    return None


def _parse(text: str) -> ast.Expression | None:
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None


def _is_sympy_expr(text: str) -> bool:
    """True if ``text`` is arithmetic over symbols, numbers and sympy/torch shape functions.

    ``sympy.sympify`` evaluates its string; with no attribute access, no subscripts and calls only to
    the constructors torch emits (``Symbol('s31', positive=True, integer=True)``), there is nothing
    left for it to run.
    """
    tree = _parse(text)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
                return False
            if any(not isinstance(k.value, ast.Constant) for k in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if node.id.startswith("_") or (node.id in vars(builtins) and node.id not in _SYMPY_CALLS):
                return False
        elif not isinstance(node, (*_ARITHMETIC, ast.Constant)):
            return False
    return True


def _is_guard(text: str) -> bool:
    """True if ``text`` compares input sizes, e.g. ``(L['x'].size()[0] // 2) != 1``.

    Guards are ``exec`` 'd as Python when the module is built, so only subscripts of ``L``, the size
    methods, arithmetic and shape functions are let through.
    """
    tree = _parse(text)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            ok = ((isinstance(func, ast.Name) and func.id in _GUARD_CALLS)
                  or (isinstance(func, ast.Attribute) and func.attr in _GUARD_METHODS
                      and isinstance(func.value, ast.Subscript))
                  or (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                      and func.value.id == "math" and func.attr in _MATH_CALLS))
            if not ok or node.keywords:
                return False
        elif isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_METHODS | _MATH_CALLS:
                return False
        elif isinstance(node, ast.Name):
            if node.id not in _GUARD_CALLS | {"L", "math", "inf"}:
                return False
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str)):
                return False
        elif not isinstance(node, (*_ARITHMETIC, ast.Subscript)):
            return False
    return True


def _is_plain_spec(text: str) -> bool:
    """True if a serialised pytree spec only nests tuples, lists and dicts with identifier keys.

    FX builds the module's ``forward`` signature from these keys.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return False
    for key, value in _walk(doc):
        if key == "type" and value not in _SPEC_TYPES:
            return False
        if key == "context" and value not in (None, "null"):
            try:
                context = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                return False
            if context is not None and not (
                isinstance(context, list) and all(isinstance(k, str) and _IDENTIFIER.fullmatch(k) for k in context)
            ):
                return False
    return True
