"""A short real training through tools/train_net.py reaches an AP that only a model that learns
reaches: the other end-to-end tests check the plumbing (AP in [0, 100]), which a model whose
training changes nothing passes as well.

The training (tests/conftest.py, ``learned_model``): BiSeg, the shapes config with narrower heads,
300 iterations on 64 synthetic 128-px images, evaluated on 16 others. Measured once each
(one torch thread, as the fixture runs it):

  working:             mask AP 4.16, box AP 6.01, mean IU 19.5
  SOLVER.BASE_LR 0.0:  mask AP 0.07, box AP 0.10, mean IU 11.4

The thresholds sit between them with room on both sides (a factor ~2.5 below the working values,
~15 above the broken ones; the mean IU's floor above the 15.3 of an untrained model).
"""
import json

import pytest

MIN_MASK_AP = 1.5
MIN_BOX_AP = 2.0
MIN_MEAN_IU = 16.0


@pytest.mark.slow
def test_a_short_training_learns_to_detect_and_segment_the_shapes(learned_model):
    out, results = learned_model
    print({task: {k: round(v, 2) for k, v in results[task].items() if k in ("AP", "AP50", "mIoU")}
           for task in ("segm", "bbox", "sem_seg")})
    assert results["segm"]["AP"] >= MIN_MASK_AP, results["segm"]
    assert results["bbox"]["AP"] >= MIN_BOX_AP, results["bbox"]
    assert results["sem_seg"]["mIoU"] >= MIN_MEAN_IU, results["sem_seg"]
    # all 300 iterations ran, and the loss went down
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 299
    assert sum(losses[-3:]) < 0.75 * sum(losses[:3]), (losses[:3], losses[-3:])
