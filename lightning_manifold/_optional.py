"""Optional dependencies: one clear message naming the extra to install.

The plotting backends that are not core dependencies (plotly, wandb, tensorboard) are imported
through :func:`require`, so a missing package gives a single actionable message such as
``plotly is needed for interactive 3D plots: pip install 'lightning-manifold[plotly]'`` instead of
an ``ImportError`` deep inside training.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

__all__ = ["is_available", "missing_message", "require"]

# top-level module -> (extra of lightning-manifold that installs it, what it is needed for)
_EXTRAS: dict[str, tuple[str, str]] = {
    "plotly": ("plotly", "interactive 3D plots"),
    "wandb": ("wandb", "logging manifold plots to Weights & Biases"),
    "tensorboard": ("tensorboard", "logging manifold plots to TensorBoard"),
}


def missing_message(module_name: str, extra: str | None = None, purpose: str | None = None) -> str:
    """The one-line message shown when ``module_name`` cannot be imported.

    Args:
        module_name: importable name, e.g. ``"plotly"`` or ``"plotly.graph_objects"``.
        extra: the ``lightning-manifold[<extra>]`` that installs it (default: looked up, else the
            top-level module name).
        purpose: what the package is needed for (default: looked up).

    Returns:
        e.g. ``plotly is needed for interactive 3D plots:
        pip install 'lightning-manifold[plotly]'`` (on one line).
    """
    top = module_name.split(".")[0]
    known_extra, known_purpose = _EXTRAS.get(top, (top, "this feature"))
    extra = extra or known_extra
    purpose = purpose or known_purpose
    return f"{top} is needed for {purpose}: pip install 'lightning-manifold[{extra}]'"


def is_available(name: str) -> bool:
    """Whether module ``name`` can be imported (without importing it when not yet loaded).

    A module set to ``None`` in ``sys.modules`` (how tests simulate a missing package) counts as
    missing.
    """
    top = name.split(".")[0]
    if sys.modules.get(top, True) is None or sys.modules.get(name, True) is None:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(
    module_name: str, extra: str | None = None, *, purpose: str | None = None
) -> ModuleType:
    """Import and return ``module_name`` or raise one clear error naming the extra to install.

    Args:
        module_name: module to import, e.g. ``"plotly.graph_objects"``.
        extra: the ``lightning-manifold[<extra>]`` that installs it (default: looked up).
        purpose: what it is needed for, used in the message (default: looked up).

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: (a subclass of ImportError) with the message of
            :func:`missing_message` when the module (or one of its dependencies) is missing.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ModuleNotFoundError(
            missing_message(module_name, extra, purpose), name=module_name.split(".")[0]
        ) from err


class LazyModule:
    """A module imported at its first attribute access: heavy imports (matplotlib) are paid only
    by the code paths that draw."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)
