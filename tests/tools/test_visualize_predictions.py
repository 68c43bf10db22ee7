"""tools/visualize_predictions.py refuses what would draw a random model: an empty MODEL.WEIGHTS
(unless --allow-random-weights), a missing file, a checkpoint that does not fit the model. Nothing
is written then. (Its pictures: tests/tools/test_main_job_report.py, tests/engine/test_train_net.py.)"""
import pytest

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_CHECKPOINT_MODELS, TINY_CHECKPOINTS, TINY_TRUNK

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool():
    import instfcn_d2  # noqa: F401

    return load_tool("visualize_predictions")


def _argv(name, out, *opts):
    config, model_opts = TINY_CHECKPOINT_MODELS[name]
    return ["--config-file", str(REPO_ROOT / config), "--output", str(out), "--num-images", "1",
            *TINY_TRUNK, *model_opts, *opts]


def test_empty_weights_are_refused_before_anything_is_built(tool, tmp_path):
    out = tmp_path / "vis"
    with pytest.raises(SystemExit) as info:
        tool.main(_argv("fcis", out))
    message = str(info.value.code)
    assert "visualize_predictions.py: MODEL.WEIGHTS is empty" in message and "--allow-random-weights" in message
    assert not out.exists()


def test_a_missing_checkpoint_is_named(tool, tmp_path):
    out = tmp_path / "vis"
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*nowhere\.pth"):
        tool.main(_argv("fcis", out, "MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")))
    assert not out.exists()


@pytest.mark.parametrize("config,checkpoint,problem", [
    ("biseg", "fcis", "missing from the checkpoint"),  # BiSeg's semantic branch and stride-8 maps
    ("fcis", "biseg", "in the checkpoint, not in the model"),  # detectron2 alone would load it silently
])
def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tool, tmp_path, config, checkpoint, problem):
    from instfcn_d2.checkpoint import CheckpointMismatchError

    out = tmp_path / "vis"
    weights = TINY_CHECKPOINTS / f"{checkpoint}_model.pth"
    with pytest.raises(CheckpointMismatchError) as info:
        tool.main(_argv(config, out, "MODEL.WEIGHTS", str(weights)))
    message = str(info.value)
    assert message.startswith(f"checkpoint {weights} does not fit the model") and problem in message
    assert not out.exists()


def test_allow_random_weights_draws_a_random_model_on_purpose(tool, tmp_path):
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("vis_random_shapes", num_train=1, num_val=1, image_size=64)
    config, model_opts = TINY_CHECKPOINT_MODELS["fcis"]
    written = tool.main(["--config-file", str(REPO_ROOT / config), "--output", str(tmp_path / "vis"), "--num-images",
                         "1", "--allow-random-weights", *TINY_TRUNK, *model_opts,
                         "DATASETS.TEST", "('vis_random_shapes_val',)"])
    assert len(written) == 1 and written[0].endswith("_pred_vs_gt.png")
