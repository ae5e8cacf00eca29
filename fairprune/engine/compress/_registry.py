"""Compression methods by name, and the variant strings that combine them.

A variant is one or more steps joined by ``+`` and applied left to right (``nm_2_4+int8_dynamic``);
a step is a registered method name, optionally with options after a colon
(``int8_static:rows=512,balanced``). A variant has at most one 2:4 step, which comes first (it masks
float weights), and at most one quantization step (a model is quantized once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...core.errors import InputError

__all__ = ["CompressionMethod", "Option", "StepSpec", "VariantSpec", "register_compression", "get_compression",
           "list_compressions", "parse_variant", "parse_variants", "compression_help"]

_METHODS: dict[str, "CompressionMethod"] = {}


@dataclass(frozen=True)
class Option:
    """One option a step accepts: ``kind`` "int" (``KEY=N``, N >= ``minimum``) or "flag" (``KEY`` or ``KEY=true|false``)."""

    name: str
    kind: str
    default: object
    help: str
    minimum: int = 1


@dataclass(frozen=True)
class CompressionMethod:
    """Base class of a registered compression method.

    ``kind``: "quantization" or "sparsity"; ``description``: one sentence for ``--help``; ``options``:
    what may follow the name after a colon. The work is done by :mod:`fairprune.engine.compress._apply`.
    """

    name: str = ""
    kind: str = "quantization"
    description: str = ""
    options: tuple[Option, ...] = ()

    def setting(self, options: Mapping[str, object]) -> str:
        """A short label of the step with these options (the entry's ``setting``, e.g. "W8 per channel, A float")."""
        return self.name

    def describe(self, options: Mapping[str, object]) -> str:
        """What the step does with these options, in a sentence (the entry's ``description``)."""
        return self.description


def register_compression(cls):
    inst = cls()
    _METHODS[inst.name] = inst
    return cls


def list_compressions() -> list[CompressionMethod]:
    return list(_METHODS.values())


def get_compression(name: str) -> CompressionMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown compression method {name!r}; expected one of: {', '.join(_METHODS)} "
                         f"(or several joined by +, e.g. nm_2_4+int8_dynamic)") from None


def compression_help() -> str:
    """One line per method, for ``fairprune audit --help``."""
    lines = []
    for m in _METHODS.values():
        opts = "".join(f" [{o.name}{'=N' if o.kind == 'int' else ''}: {o.help}]" for o in m.options)
        lines.append(f"{m.name}: {m.description}{opts}")
    return "; ".join(lines)


@dataclass(frozen=True)
class StepSpec:
    """One step of a variant: a method name and its resolved options (defaults filled in)."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def method(self) -> CompressionMethod:
        return get_compression(self.name)

    def canonical(self) -> str:
        """The step as written, defaults left out, options sorted: the same step always reads the same."""
        parts = []
        for opt in sorted(self.method.options, key=lambda o: o.name):
            v = self.options.get(opt.name, opt.default)
            if v == opt.default:
                continue
            parts.append(opt.name if opt.kind == "flag" and v is True else f"{opt.name}={str(v).lower()}")
        return self.name + (":" + ",".join(parts) if parts else "")


@dataclass(frozen=True)
class VariantSpec:
    """A parsed variant: its steps in the order they are applied."""

    steps: tuple[StepSpec, ...]

    @property
    def name(self) -> str:
        return "+".join(s.canonical() for s in self.steps)

    @property
    def quantization(self) -> StepSpec | None:
        return next((s for s in self.steps if s.method.kind == "quantization"), None)

    @property
    def has_nm(self) -> bool:
        return any(s.method.kind == "sparsity" for s in self.steps)

    def setting(self) -> str:
        return " + ".join(s.method.setting(s.options) for s in self.steps)

    def description(self) -> str:
        return "; then ".join(s.method.describe(s.options) for s in self.steps)


def _parse_option(method: CompressionMethod, text: str, variant: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    key = key.strip()
    known = {o.name: o for o in method.options}
    if key not in known:
        expected = ", ".join(known) if known else "none"
        raise InputError(f"compression variant {variant!r}: {method.name} has no option {key!r}; expected options: "
                         f"{expected}")
    opt = known[key]
    if opt.kind == "flag":
        if not sep:
            return key, True
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return key, True
        if low in ("false", "0", "no"):
            return key, False
        raise InputError(f"compression variant {variant!r}: option {key} takes true or false; found {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"compression variant {variant!r}: option {key} takes a whole number, e.g. {key}=256; "
                         f"found {value!r}") from None
    if n < opt.minimum:
        raise InputError(f"compression variant {variant!r}: option {key} must be >= {opt.minimum}; found {n}")
    return key, n


def parse_variant(text: str) -> VariantSpec:
    """``"nm_2_4+int8_static:rows=128,balanced"`` -> VariantSpec. Raises InputError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"expected a compression variant such as int8_dynamic or nm_2_4+int8_dynamic; found {text!r}")
    variant = text.strip()
    steps = []
    for part in variant.split("+"):
        name, _, opts = part.strip().partition(":")
        if not name:
            raise InputError(f"compression variant {variant!r} has an empty step; expected NAME[+NAME], "
                             f"e.g. nm_2_4+int8_dynamic")
        method = get_compression(name.strip())
        options = {o.name: o.default for o in method.options}
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, value = _parse_option(method, item, variant)
            options[key] = value
        steps.append(StepSpec(method.name, options))
    kinds = [s.method.kind for s in steps]
    if kinds.count("sparsity") > 1 or kinds.count("quantization") > 1:
        raise InputError(f"compression variant {variant!r}: expected at most one 2:4 step and one quantization "
                         f"step (a model is quantized once); found {' + '.join(s.name for s in steps)}")
    if "sparsity" in kinds and kinds[0] != "sparsity":
        raise InputError(f"compression variant {variant!r}: nm_2_4 must come first (it masks the float weights "
                         f"before they are quantized), e.g. nm_2_4+{steps[0].name}")
    return VariantSpec(tuple(steps))


def parse_variants(texts) -> list[VariantSpec]:
    """Several variants; the same variant twice (after canonicalisation) is refused."""
    specs = [parse_variant(t) for t in texts]
    seen: dict[str, str] = {}
    for raw, spec in zip(texts, specs):
        if spec.name in seen:
            raise InputError(f"compression variant {raw!r} is the same as {seen[spec.name]!r}; expected each variant once")
        seen[spec.name] = raw
    return specs
