"""The package's layers import one way, read from the source (every import statement, those inside
functions too), so an import that would only run on some path is caught as well.

    layers  (native ops)            <- core, deploy, modeling, export, ...
    core    (detectron2 free)       <- deploy, modeling, export, ...
    deploy  (detectron2 free)       <- export, tools
    modeling (detectron2)           <- export, engine, tools
    export                          <- tools

Each layer lists what it may import from the package; anything else in the package, and detectron2
or fvcore for the detectron2-free layers, is an upward (or sideways) import and fails the test.
"""
import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from conftest import REPO_ROOT

PACKAGE = "instfcn_d2"
PACKAGE_DIR = REPO_ROOT / PACKAGE

#: layer -> the package's modules it may import (prefixes); None: any.
ALLOWED = {
    "instfcn_d2.layers": ("instfcn_d2.layers", "instfcn_d2._C"),
    "instfcn_d2.core": ("instfcn_d2.core", "instfcn_d2.layers"),
    "instfcn_d2.deploy": ("instfcn_d2.deploy", "instfcn_d2.core", "instfcn_d2.layers"),
    "instfcn_d2.modeling": ("instfcn_d2.modeling", "instfcn_d2.core", "instfcn_d2.layers"),
    "instfcn_d2.export": (
        "instfcn_d2.export",
        "instfcn_d2.deploy",
        "instfcn_d2.modeling",
        "instfcn_d2.core",
        "instfcn_d2.layers",
        "instfcn_d2.__version__",
    ),
}
#: Third-party packages a detectron2-free layer must not import.
DETECTRON2 = ("detectron2", "fvcore")
DETECTRON2_FREE = ("instfcn_d2.layers", "instfcn_d2.core", "instfcn_d2.deploy")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> Iterator[Tuple[int, str]]:
    """``(line, absolute module or module.name)`` of every import in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                yield node.lineno, f"{prefix}.{alias.name}"


def layer_of(module: str) -> Optional[str]:
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def violations(source: str, module: str, is_package: bool) -> List[str]:
    layer = layer_of(module)
    if layer is None:
        return []
    found = []
    for line, name in imports_of(source, module, is_package):
        top = name.split(".")[0]
        if top == PACKAGE and name != PACKAGE:
            if not any(name == a or name.startswith(a + ".") for a in ALLOWED[layer]):
                found.append(f"{module}:{line} imports {name} ({layer} may import {', '.join(ALLOWED[layer])})")
        elif top in DETECTRON2 and layer in DETECTRON2_FREE:
            found.append(f"{module}:{line} imports {name} ({layer} is detectron2 free)")
    return found


def package_files() -> List[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_import_goes_up_a_layer():
    found = []
    for path in package_files():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_every_layer_exists():
    for layer in ALLOWED:
        assert (REPO_ROOT / Path(*layer.split("."))).is_dir(), layer


@pytest.mark.parametrize(
    "module, is_package, source, expected",
    [
        ("instfcn_d2.modeling.fcis.heads", False, "from ...deploy import load", "imports instfcn_d2.deploy.load"),
        ("instfcn_d2.modeling.fcis.heads", False, "def f():\n    from instfcn_d2.export import x", "instfcn_d2.export.x"),
        ("instfcn_d2.deploy.fcis", False, "from ..export.graphs import DenseGraph", "instfcn_d2.export.graphs"),
        ("instfcn_d2.deploy", True, "from ..modeling import FCIS", "instfcn_d2.modeling.FCIS"),
        ("instfcn_d2.core.fcis.reading", False, "from detectron2.structures import Boxes", "detectron2 free"),
        ("instfcn_d2.core.boxes", False, "import fvcore.nn", "detectron2 free"),
        ("instfcn_d2.core.fcis", True, "from ...modeling.common import x", "instfcn_d2.modeling.common.x"),
        ("instfcn_d2.layers.reference", False, "from ..core import boxes", "instfcn_d2.core.boxes"),
        ("instfcn_d2.export.exporter", False, "from ..engine import Trainer", "instfcn_d2.engine.Trainer"),
    ],
)
def test_the_check_catches_an_upward_import(module, is_package, source, expected):
    found = violations(source, module, is_package)
    assert len(found) == 1 and expected in found[0], found


def test_the_check_accepts_imports_down_the_layers():
    assert violations("from ...core.fcis import FCISReader\nfrom ...layers import ps_roi_assemble", "instfcn_d2.modeling.fcis.heads", False) == []
    assert violations("from ..core.detections import Detections", "instfcn_d2.deploy", True) == []
    assert violations("from ..modeling.instances import x\nfrom ..deploy import load", "instfcn_d2.export.evaluation", False) == []


def test_no_mixins_in_the_models_parts():
    """Heads, readers, meta-architectures and the deployment and export classes derive from one
    class at most: parts are composed (an object the heads own), not mixed in."""
    mixed = []
    for path in package_files():
        module = module_name(path)
        if layer_of(module) is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and len(node.bases) > 1:
                mixed.append(f"{module}.{node.name}({', '.join(ast.unparse(b) for b in node.bases)})")
    assert not mixed, mixed
