"""fairprune: who pays for pruning? Per-group audits of compressed PyTorch classifiers.

The engine. It never imports a UI toolkit; the dashboard (``app/``) and the CLI call these functions.

The public API is named here and resolved on first use (PEP 562), so ``import fairprune`` costs no torch:

    >>> import fairprune
    >>> result = fairprune.audit(fairprune.load_model("m.safetensors", arch="resnet18", num_classes=10),
    ...                          fairprune.load_dataset("test.npz"), sparsities=[0.5, 0.9])

The layers (docs/design.md): ``core`` < ``zoo``, ``data``, ``present`` < ``engine`` < ``run``; a module
imports only its own layer or those below (``data`` may import ``zoo``).
"""

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_API = {
    # core: typed results and errors
    "AuditResult": "fairprune.core.result", "LevelResult": "fairprune.core.result",
    "VariantResult": "fairprune.core.result", "InputError": "fairprune.core.errors", "Cancelled": "fairprune.core.errors",
    # zoo: models in
    "load_model": "fairprune.zoo", "create_model": "fairprune.zoo", "list_models": "fairprune.zoo",
    "LoadedModel": "fairprune.zoo",
    # data: data in
    "load_dataset": "fairprune.data", "GroupedDataset": "fairprune.data", "demo_model": "fairprune.data",
    "demo_dataset": "fairprune.data",
    # present: results into words and pages
    "render_html": "fairprune.present.report", "write_report": "fairprune.present.report",
    "headline": "fairprune.present.reading",
    # engine: computations and pipelines
    "audit": "fairprune.engine.audit", "AuditSpec": "fairprune.engine.audit",
    "compare": "fairprune.engine.metrics", "group_metrics": "fairprune.engine.metrics",
    "search": "fairprune.engine.search", "check": "fairprune.engine.search",
    "mitigate": "fairprune.engine.mitigate", "MitigationSpec": "fairprune.engine.mitigate",
    "diagnose": "fairprune.engine.diagnose",
    # run: running work
    "RunStore": "fairprune.run.store",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fairprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
