"""Checkpoints keep working across code changes: tiny models of each method were saved together
with their outputs on a fixed image; loading those checkpoints (strictly: every parameter, same
shapes) into today's models must reproduce the outputs.

``python tests/modeling/test_checkpoint_compat.py --write`` regenerates the files in
``tests/modeling/checkpoints/``; do it only when a change of the parameters or of the outputs is
intended, and say so in the commit.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest, when run as a script

from tiny_models import TINY_CHECKPOINT_MODELS, tiny_checkpoint_cfg as _cfg, tiny_checkpoint_image as _image  # noqa: E402

FIXTURES = HERE / "checkpoints"
MODELS = TINY_CHECKPOINT_MODELS


def _outputs(model):
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(), "height": 128, "width": 160}])[0]
    inst = out["instances"]
    result = {
        "boxes": inst.pred_boxes.tensor,
        "scores": inst.scores,
        "classes": inst.pred_classes,
        # (K, H, W) bool as packed bits: a compact file, compared bit for bit
        "masks": torch.from_numpy(np.packbits(inst.pred_masks.numpy(), axis=-1)),
    }
    if "sem_seg" in out:
        result["sem_seg_labels"] = out["sem_seg"].argmax(dim=0).to(torch.uint8)
        result["sem_seg_class_means"] = out["sem_seg"].mean(dim=(1, 2))
    return result


def write(names=tuple(MODELS)):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import instfcn_d2  # noqa: F401

    FIXTURES.mkdir(exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = build_model(_cfg(name))
        # trained-looking weights: the from-scratch init of the score maps is nearly zero
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        DetectionCheckpointer(model, str(FIXTURES)).save(f"{name}_model")
        (FIXTURES / "last_checkpoint").unlink()
        torch.save(_outputs(model), FIXTURES / f"{name}_outputs.pth")
        print(f"wrote {FIXTURES / name}_model.pth and {name}_outputs.pth")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_old_checkpoint_loads_strictly_and_gives_the_same_outputs(name):
    from detectron2.modeling import build_model

    from instfcn_d2.checkpoint import StrictDetectionCheckpointer

    model = build_model(_cfg(name))
    StrictDetectionCheckpointer(model).load(str(FIXTURES / f"{name}_model.pth"))
    expected = torch.load(FIXTURES / f"{name}_outputs.pth", weights_only=False)
    got = _outputs(model)
    assert set(got) == set(expected)
    assert len(expected["scores"]) > 0, "the saved outputs must hold detections to compare"
    for key, value in expected.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-4, msg=f"{name} {key}")
        else:
            assert torch.equal(got[key], value), f"{name} {key}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="regenerate the checkpoints and outputs")
    args = parser.parse_args()
    if args.write:
        write()
    else:
        parser.print_help()
