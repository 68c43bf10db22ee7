"""tools/export_model.py's command line: its flags, and the errors a user gets for bad input."""
import pytest

from conftest import REPO_ROOT, load_tool

CONFIG = str(REPO_ROOT / "configs/shapes/fcis_R18_cpu.yaml")


@pytest.fixture(scope="module")
def tool():
    return load_tool("export_model")


def test_help_lists_the_flags(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config-file", "--format", "--output", "--sample-image", "--run-eval", "--allow-random-weights"):
        assert flag in out
    assert "--opts" not in out and "KEY VALUE" in out  # overrides come last, as in detectron2's export_model.py
    for fmt in ("torchscript", "exported_program", "aoti"):
        assert fmt in out


def test_an_unknown_format_is_refused(tool, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", CONFIG, "--format", "tensorrt", "--output", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_empty_weights_are_refused_before_anything_is_written(tool, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS is empty"):
        tool.main(["--config-file", CONFIG, "--output", str(out)])
    assert not out.exists()


def test_a_missing_sample_image_is_named(tool, tmp_path):
    with pytest.raises(SystemExit, match="--sample-image .*nowhere.png not found"):
        tool.main(["--config-file", CONFIG, "--output", str(tmp_path), "--sample-image", str(tmp_path / "nowhere.png")])


def test_config_overrides_come_last_as_in_detectron2(tool):
    args = tool.get_parser().parse_args(["--config-file", CONFIG, "--output", "out", "--run-eval",
                                         "MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cpu"])
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cpu"] and args.run_eval
    cfg = tool.setup_cfg(tool.get_parser().parse_args(["--config-file", CONFIG, "--output", "out",
                                                       "--allow-random-weights", "SOLVER.MAX_ITER", "7"]))
    assert cfg.SOLVER.MAX_ITER == 7


def test_overrides_after_opts_are_still_accepted(tool):
    """demo.py's form, which this tool took before: ``--opts KEY VALUE ...``."""
    args = tool.get_parser().parse_args(["--config-file", CONFIG, "--output", "out", "--allow-random-weights",
                                         "--opts", "SOLVER.MAX_ITER", "7"])
    assert tool.setup_cfg(args).SOLVER.MAX_ITER == 7


def test_a_missing_checkpoint_is_named(tool, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(SystemExit, match=r"export_model.py: MODEL.WEIGHTS: checkpoint not found: .*nowhere\.pth"):
        tool.main(["--config-file", CONFIG, "--output", str(out), "MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")])
    assert not out.exists()
