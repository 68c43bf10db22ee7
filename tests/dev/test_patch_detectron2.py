"""dev/patch_detectron2.py: whole-line edits per detectron2 version, all checked before any write."""
import os
import tarfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_dev

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def patcher():
    return load_dev("patch_detectron2")


def _tree(root: Path, version: str) -> Path:
    """A minimal source tree holding exactly the lines the edits of ``version`` expect."""
    (root / "detectron2" / "utils").mkdir(parents=True)
    comm = "def get_world_size():\n    return 1\n"
    if version == "main":
        comm += "\n\ndef create_local_process_group(num_workers_per_machine):\n    pass\n"
    (root / "detectron2" / "utils" / "comm.py").write_text(comm)
    (root / "detectron2" / "__init__.py").write_text('__version__ = "0.6"\n')
    (root / "detectron2" / "model_zoo").mkdir()
    (root / "detectron2" / "model_zoo" / "model_zoo.py").write_text(
        "import os\nimport pkg_resources\n\n\ndef get_config_file(config_path):\n"
        "    cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
        "    )\n    return cfg_file\n"
    )
    return root


def test_main_edits_apply_compile_and_are_idempotent(patcher, tmp_path):
    src = _tree(tmp_path, "main")
    assert patcher.detect_version(src) == "main"
    assert patcher.apply(src) == "main"
    text = (src / "detectron2" / "model_zoo" / "model_zoo.py").read_text()
    assert "pkg_resources" not in text
    assert 'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)' in text
    compile(text, "model_zoo.py", "exec")
    assert patcher.apply(src) == "main"  # stamped: a second run changes nothing
    assert (src / "detectron2" / "model_zoo" / "model_zoo.py").read_text() == text


def test_a_partial_line_match_is_refused_and_nothing_is_written(patcher, tmp_path):
    src = _tree(tmp_path, "main")
    path = src / "detectron2" / "model_zoo" / "model_zoo.py"
    # Same text, but not at the start of a line: not a whole-line match.
    original = path.read_text().replace("import pkg_resources\n", "import os, pkg_resources  # import pkg_resources\n")
    path.write_text(original)
    with pytest.raises(patcher.PatchError, match=r"model_zoo.py: expected 1 occurrence.*found 0"):
        patcher.apply(src)
    assert path.read_text() == original
    assert not (src / patcher.STAMP).exists()


def test_an_edit_that_breaks_the_syntax_is_refused(patcher, tmp_path, monkeypatch):
    src = _tree(tmp_path, "main")
    bad = patcher.Edit("detectron2/model_zoo/model_zoo.py", "import os\n", "import os\n  x = (\n", "test")
    monkeypatch.setitem(patcher.EDITS, "main", [bad])
    with pytest.raises(patcher.PatchError, match="would not compile"):
        patcher.apply(src)
    assert "x = (" not in (src / "detectron2" / "model_zoo" / "model_zoo.py").read_text()


def test_every_edit_is_whole_lines_with_a_reason(patcher):
    for version, edits in patcher.EDITS.items():
        for e in edits:
            assert e.old.endswith("\n") and (e.new == "" or e.new.endswith("\n")), (version, e.path)
            assert e.why, (version, e.path)


def test_unknown_trees_are_named(patcher, tmp_path):
    with pytest.raises(patcher.PatchError, match="not a detectron2 source tree"):
        patcher.detect_version(tmp_path)
    _tree(tmp_path, "v0.6")
    (tmp_path / "detectron2" / "__init__.py").write_text('__version__ = "0.5"\n')
    with pytest.raises(patcher.PatchError, match="unknown detectron2 version"):
        patcher.detect_version(tmp_path)


def _vendored_main_archive():
    vendor = os.environ.get("INSTFCN_VENDOR_DIR") or str(REPO_ROOT.parent / "shared" / "vendor")
    setup_env = load_dev("setup_env")
    path = Path(vendor) / setup_env.D2_ARCHIVE_NAME
    return path if path.is_file() else None


@pytest.mark.skipif(_vendored_main_archive() is None, reason="no vendored detectron2 main archive on this machine")
def test_the_edits_for_main_apply_to_the_pinned_commit(patcher, tmp_path):
    with tarfile.open(_vendored_main_archive()) as t:
        members = [m for m in t.getmembers() if m.name.endswith(("detectron2/utils/comm.py", "detectron2/__init__.py",
                                                                  "detectron2/model_zoo/model_zoo.py"))]
        t.extractall(tmp_path, members=members)
    (src,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert patcher.detect_version(src) == "main"
    texts = patcher.plan(src, "main")
    assert "pkg_resources" not in texts["detectron2/model_zoo/model_zoo.py"]
