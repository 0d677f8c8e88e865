"""influence-signals: training-data influence signals for data debugging, and a debugger for your own data.

The public API (imported on first use, so that ``import influence_signals`` stays light):

- ``find_issues(data, label=..., ...) -> Issues``: every row of a table, DataFrame or image folder judged
  (mislabel, anomaly or none, a suggested label), through the package's workflow;
- ``detect(labels, pred_probs, features=None)``: the same detector on your own arrays;
- ``TracIn(model, final_layer, checkpoints, learning_rates)``: self-influence and the train -> validation
  signals of your own model and checkpoints.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Issues", "TracIn", "WorkflowFailed", "__version__", "detect", "find_issues"]

_HOMES = {"Issues": "api", "TracIn": "api", "WorkflowFailed": "api", "find_issues": "api", "detect": "detector"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
