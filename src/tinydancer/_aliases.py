"""The module paths of releases before the subpackages, kept importable.

``import tinydancer.routing`` (or ``from tinydancer.model import FastGRNN``) still works: the
old name resolves, lazily, to the module that now holds the code, with a DeprecationWarning that
names the new path.  Nothing is imported until an old name is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Sequence

#: old module (under ``tinydancer.``) -> where it lives now
MOVED = {
    "model": "nn.model",
    "data": "nn.data",
    "losses": "nn.losses",
    "optim": "nn.optim",
    "compression": "nn.compression",
    "training": "nn.training",
    "datafiles": "nn.datafiles",
    "features": "candidates.features",
    "uncertainty": "candidates.uncertainty",
    "routing": "candidates",
    "embeddings": "llm.embeddings",
    "tables": "llm.tables",
    "memory": "llm.memory",
    "evaluation": "llm.evaluation",
    "query_router": "llm.query_router",
    "wire": "server.wire",
    "storage": "server.storage",
    "learning": "server.learning",
    "service": "server",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str) -> None:
        self.package = package
        self._specs: dict[str, Any] = {}  # new name -> the module's own spec

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        prefix, _, name = fullname.rpartition(".")
        if prefix != self.package or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        new = f"{self.package}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} has moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs.setdefault(new, module.__spec__)
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name.  The import system has
        just pointed ``__spec__`` at the old name; point it back, so reload and pickling see one module."""
        module.__spec__ = self._specs.get(module.__name__, module.__spec__)


def install(package: str) -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder(package))
