"""Cityscapes instance segmentation on detectron2's own registration, with either detectron2.

detectron2 registers ``cityscapes_fine_instance_seg_train`` / ``_val`` / ``_test`` itself (images
``$DETECTRON2_DATASETS/cityscapes/leftImg8bit/<split>/<city>/``, annotations
``.../gtFine/<split>/<city>/``, the 8 thing classes, ``evaluator_type "cityscapes_instance"``);
its loader reads the polygons of ``*_gtFine_polygons.json`` and its ``CityscapesInstanceEvaluator``
runs the official ``cityscapesscripts`` evaluation. This project uses both as they are.

Why this module exists: detectron2's main branch imports internal paths. Its Cityscapes loader
and evaluators import ``deeplearning.projects.cityscapesApi.cityscapesscripts.<...>``, an internal
package path that is not published anywhere; v0.6 imports the package the package index ships,
``cityscapesscripts``. :func:`install_cityscapesscripts_alias` makes the
internal name resolve to the installed ``cityscapesscripts`` instead of patching detectron2.

How: an import finder appended to the *end* of ``sys.meta_path``. The import system consults it
only after every other finder failed to find a module, so

* a real ``deeplearning.projects.cityscapesApi`` (where one is installed) always wins;
* under v0.6, which never imports the internal name, it is never consulted;
* installing it reads nothing and writes nothing (importing ``instfcn_d2`` touches no file
  system): the alias modules are made on the first import of the internal name, by then
  importing ``cityscapesscripts``, whose absence is an ``ImportError`` saying what to install.

The alias hands out the *same* module objects as ``cityscapesscripts`` for its modules (detectron2
sets the evaluation script's global ``args`` through the internal name; the script reads them
under its own), and stand-in packages for the package levels whose submodules are imported
through the finder again, so no ``cityscapesscripts`` module is ever loaded twice.

detectron2's loader parses the files in a ``multiprocessing`` pool. Forked workers (Linux'
default) inherit the finder. Workers started with ``spawn`` / ``forkserver`` re-import the main
script, which installs it when the script imports ``instfcn_d2`` at the top, as
``tools/train_net.py`` does.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

__all__ = ["INTERNAL_NAME", "PACKAGE_NAME", "CityscapesScriptsAlias", "install_cityscapesscripts_alias"]

#: The name detectron2's main branch imports ``cityscapesscripts`` under.
INTERNAL_NAME = "deeplearning.projects.cityscapesApi.cityscapesscripts"
#: The package the package index ships (``pip install cityscapesscripts``).
PACKAGE_NAME = "cityscapesscripts"
# The package levels above INTERNAL_NAME: empty stand-ins when nothing else provides them.
_PARENTS = ("deeplearning", "deeplearning.projects", "deeplearning.projects.cityscapesApi")


class _ExistingModuleLoader(importlib.abc.Loader):
    """Hands the import system a module that already exists (nothing is executed)."""

    def __init__(self, module: types.ModuleType):
        self._module = module

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        pass


def _stand_in_package(name: str, target: types.ModuleType | None = None) -> types.ModuleType:
    """An empty package ``name`` (``__path__ = []``: its submodules come through the finder);
    attributes it lacks are looked up on ``target`` when given (``from <alias> import helpers``)."""
    module = types.ModuleType(name, f"instfcn_d2 alias of {target.__name__}" if target else "instfcn_d2 alias parent")
    module.__path__ = []
    if target is not None:

        def __getattr__(attr, _target=target):  # PEP 562 module __getattr__; dunders stay the stand-in's
            if attr.startswith("__"):
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            return getattr(_target, attr)

        module.__getattr__ = __getattr__
    return module


class CityscapesScriptsAlias(importlib.abc.MetaPathFinder):
    """Resolves ``deeplearning.projects.cityscapesApi.cityscapesscripts[.x.y]`` to
    ``cityscapesscripts[.x.y]`` when no other finder provides it (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _PARENTS:
            module, is_package = _stand_in_package(fullname), True
        elif fullname == INTERNAL_NAME or fullname.startswith(INTERNAL_NAME + "."):
            real_name = PACKAGE_NAME + fullname[len(INTERNAL_NAME):]
            try:
                real = importlib.import_module(real_name)
            except ModuleNotFoundError as e:
                if e.name not in (PACKAGE_NAME, real_name):
                    raise  # a dependency of cityscapesscripts is missing: its own message says which
                if e.name == PACKAGE_NAME:
                    hint = f"install it with: pip install {PACKAGE_NAME}"
                else:
                    hint = "the installed version lacks it"
                raise ModuleNotFoundError(
                    f"detectron2's Cityscapes code imports {fullname}, which instfcn_d2 maps to "
                    f"{real_name}: {e}; {hint}",
                    name=fullname,
                ) from e
            is_package = hasattr(real, "__path__")
            module = _stand_in_package(fullname, real) if is_package else real
        else:
            return None
        return importlib.machinery.ModuleSpec(fullname, _ExistingModuleLoader(module), is_package=is_package)


def install_cityscapesscripts_alias() -> CityscapesScriptsAlias:
    """Append the finder to ``sys.meta_path`` (once per process; later calls return the installed
    one). Cheap and side-effect free: nothing is imported or read until detectron2's code imports
    the internal name."""
    for finder in sys.meta_path:
        if type(finder).__name__ == CityscapesScriptsAlias.__name__ and type(finder).__module__ == __name__:
            return finder
    finder = CityscapesScriptsAlias()
    sys.meta_path.append(finder)
    return finder
