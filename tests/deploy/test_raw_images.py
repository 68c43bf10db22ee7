"""Raw images in: a deployed model takes an H x W x 3 uint8 array as OpenCV reads it (BGR, or RGB
with a flag) of any size, resizes it as detectron2's DefaultPredictor does, and returns results at
the image's size, equal to DefaultPredictor's."""
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor

from tiny_models import TINY_CHECKPOINTS, tiny_checkpoint_cfg, tiny_checkpoint_image

from instfcn_d2.core.transforms import resize_image, resize_shortest_edge_shape
from instfcn_d2.deploy import load
from instfcn_d2.export import export_model

TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "200"]


@pytest.fixture(scope="module", params=["fcis", "instance_fcn"])
def exported(request, tmp_path_factory):
    name = request.param
    cfg = tiny_checkpoint_cfg(name, "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth"), *TEST_SIZE)
    predictor = DefaultPredictor(cfg)
    folder = tmp_path_factory.mktemp(f"{name}_raw")
    export_model(
        predictor.model, "torchscript", tiny_checkpoint_image().float(), str(folder),
        input_format=cfg.INPUT.FORMAT, test_resize=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
    )  # fmt: skip
    return predictor, load(str(folder))


def _raw_images():
    """BGR uint8 images of other sizes than the model's test size: upscaled, downscaled (the
    longer side capped), and a portrait one."""
    base = tiny_checkpoint_image().permute(1, 2, 0).numpy()  # (128, 160, 3)
    return [
        resize_image(base, (96, 120)),
        np.ascontiguousarray(np.concatenate([base, base[::-1]], axis=1)),  # (128, 320): the cap at 200
        np.ascontiguousarray(base.transpose(1, 0, 2)),  # (160, 128)
    ]


def test_raw_images_give_default_predictor_results_at_their_size(exported):
    predictor, deployed = exported
    for image in _raw_images():
        expected = predictor(image)["instances"]
        got = deployed(image)
        assert got.image_size == tuple(image.shape[:2]) == expected.image_size
        assert len(got) == len(expected) > 0
        torch.testing.assert_close(got.boxes, expected.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
        assert torch.equal(got.classes, expected.pred_classes)
        assert got.masks.shape == expected.pred_masks.shape and (got.masks != expected.pred_masks).float().mean() < 1e-3


def test_rgb_flag_and_lists(exported):
    _, deployed = exported
    images = _raw_images()[:2]
    bgr = deployed(images[0])
    rgb = deployed(np.ascontiguousarray(images[0][:, :, ::-1]), rgb=True)
    assert torch.equal(bgr.boxes, rgb.boxes) and torch.equal(bgr.masks, rgb.masks)
    both = deployed(images)
    assert isinstance(both, list) and len(both) == 2
    assert torch.equal(both[0].boxes, bgr.boxes) and both[1].image_size == images[1].shape[:2]
    with pytest.raises(ValueError, match="output_size is for a resized"):
        deployed(images[0], (10, 10))


def test_the_resize_is_detectron2s():
    from detectron2.data import transforms as T

    for h, w, short, longest in ((128, 160, 480, 640), (100, 1000, 256, 512), (333, 222, 200, 1333)):
        image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        transform = T.ResizeShortestEdge([short, short], longest).get_transform(image)
        expected = transform.apply_image(image)
        assert resize_shortest_edge_shape(h, w, short, longest) == expected.shape[:2]
        assert np.array_equal(resize_image(image, expected.shape[:2]), expected)
        as_float = image.astype(np.float32)
        assert np.array_equal(resize_image(as_float, expected.shape[:2]), transform.apply_image(as_float))


def test_a_folder_without_the_test_resize_says_so(exported, tmp_path):
    import json
    import shutil

    _, deployed = exported
    folder = tmp_path / "old"
    shutil.copytree(deployed.directory, folder)
    meta = json.loads((folder / "deploy.json").read_text())
    del meta["test_resize"]
    (folder / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="records no 'test_resize'"):
        load(str(folder))(_raw_images()[0])
