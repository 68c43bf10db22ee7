"""What a careless COCO JSON gets wrong, refused up front by instfcn_d2.data.coco_json with the file,
the id and the field named: duplicated or dangling ids, an empty image list or category list,
non-finite or negative boxes, NaN polygons, bad iscrowd / area / image sizes, in training and
evaluation files alike; and image files the loader would misread (16-bit and float modes, a size
other than the JSON's), found from their headers."""
import json
import math

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import read_image
from PIL import Image

from conftest import REPO_ROOT
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import CocoAnnotationError, apply_coco_json_config, check_coco_json, check_coco_json_datasets
from tiny_coco import write_tiny_coco

FCIS = str(REPO_ROOT / "configs" / "shapes" / "fcis_R18_cpu.yaml")


def _test_split(json_file, images):
    return get_instfcn_cfg(FCIS, ["DATASETS.COCO_JSON_TEST", json_file, "DATASETS.COCO_IMAGE_ROOT_TEST", images])


def _train_split(json_file, images):
    return get_instfcn_cfg(FCIS, ["DATASETS.COCO_JSON_TRAIN", json_file, "DATASETS.COCO_IMAGE_ROOT_TRAIN", images])


def _refused(json_file, images, pattern):
    """The file is refused with a message matching ``pattern``, as a training and as an evaluation
    set (the same checks on both)."""
    with pytest.raises(CocoAnnotationError, match=pattern) as raised:
        check_coco_json(json_file, image_root=images)
    for cfg in (_train_split(json_file, images), _test_split(json_file, images)):
        with pytest.raises(CocoAnnotationError, match=pattern):
            apply_coco_json_config(cfg)
    return str(raised.value)


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


# ---------------------------------------------------------------- ids


def test_duplicate_image_ids_are_refused_naming_the_ids(tmp_path):
    """Two images with one id: pycocotools keeps one of them and gives it the annotations of both,
    so training read one image with the other's masks too (detectron2 only warned vaguely)."""
    def edit(data):
        data["images"][1]["id"] = data["images"][0]["id"]
        data["images"][3]["id"] = data["images"][2]["id"]
        for a in data["annotations"]:
            a["image_id"] = {101: 100, 103: 102}.get(a["image_id"], a["image_id"])

    json_file, images = write_tiny_coco(tmp_path, num_images=4, edit=edit)
    text = _refused(json_file, images, r"annotations.json: 2 problem")
    assert "image id 100: 2 images have this id (img_00.png, img_01.png)" in text
    assert "image id 102: 2 images have this id (img_02.png, img_03.png)" in text


def test_duplicate_annotation_and_category_ids_are_refused(tmp_path):
    def edit(data):
        _ann(data, 4)["id"] = 3
        data["categories"][1]["id"] = 7  # "square" takes the id of "disc"
        for a in data["annotations"]:
            a["category_id"] = 7

    json_file, images = write_tiny_coco(tmp_path, num_images=3, edit=edit)
    text = _refused(json_file, images, r"annotations.json: 2 problem")
    assert "annotation id 3: 2 annotations have this id" in text
    assert "category id 7: 2 categories have this id (disc, square)" in text


def test_annotations_pointing_at_no_image_or_category_are_refused_naming_the_field(tmp_path):
    def edit(data):
        _ann(data, 2)["image_id"] = 999
        _ann(data, 5)["category_id"] = 4

    json_file, images = write_tiny_coco(tmp_path, num_images=3, edit=edit)
    text = _refused(json_file, images, r"annotations.json: 2 problem")
    assert "annotation id 2 (image id 999, <image not in images>): image_id 999 is not in 'images'" in text
    assert "annotation id 5 (image id 102, img_02.png): category_id 4 is not in 'categories'" in text


def test_a_long_list_of_problems_is_cut_with_the_count(tmp_path):
    def edit(data):
        for a in data["annotations"]:
            a["image_id"] = 5000 + a["id"]

    json_file, images = write_tiny_coco(tmp_path, num_images=12, edit=edit)
    text = _refused(json_file, images, r"annotations.json: 24 problem")
    assert "annotation id 10 (" in text and "annotation id 11 (" not in text
    assert "... and 14 more" in text


# ---------------------------------------------------------------- the file's lists


def test_an_evaluation_json_without_images_is_refused_naming_the_file(tmp_path):
    """Accepted before: the evaluation failed only after the whole schedule, naming no file."""
    def edit(data):
        data["images"], data["annotations"] = [], []

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    _refused(json_file, images, r"annotations.json: 'images' is empty")


@pytest.mark.parametrize("categories", [None, []], ids=["missing", "empty"])
def test_a_json_without_categories_is_refused_naming_the_key(tmp_path, categories):
    """An empty list died inside detectron2's loader (``min()`` of no category ids)."""
    def edit(data):
        if categories is None:
            del data["categories"]
        else:
            data["categories"] = categories

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    _refused(json_file, images, r"annotations.json: (no 'categories' list|'categories' is empty)")


def test_categories_need_an_id_and_a_name(tmp_path):
    def edit(data):
        del data["categories"][0]["name"]

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    _refused(json_file, images, r"category id 7: no 'name'")


# ---------------------------------------------------------------- annotation values


@pytest.mark.parametrize(
    "bbox, message",
    [
        ([10, 10, math.nan, 20], r"bbox \[10, 10, nan, 20\] has a value that is not a finite number"),
        ([10, math.inf, 20, 20], r"bbox \[10, inf, 20, 20\] has a value that is not a finite number"),
        ([10, 10, -5, 20], r"bbox \[10, 10, -5, 20\] has a negative width or height"),
        ([10, 10, 20, None], r"bbox \[10, 10, 20, None\] has a value that is not a finite number"),
        (None, r"no bbox"),
        ([500, 500, 10, 10], r"bbox \[500, 500, 10, 10\] reaches outside the image of height x width 96 x 96"),
        ([80, -3, 10, 10], r"bbox \[80, -3, 10, 10\] reaches outside the image"),
    ],
    ids=["nan", "inf", "negative", "null", "missing", "off_the_image", "past_the_top"],
)
def test_bad_boxes_are_refused_in_training_and_evaluation_files(tmp_path, bbox, message):
    """A NaN or negative box of the evaluation set passed without a word before."""
    def edit(data):
        if bbox is None:
            del _ann(data, 3)["bbox"]
        else:
            _ann(data, 3)["bbox"] = bbox

    json_file, images = write_tiny_coco(tmp_path, num_images=2, edit=edit)
    _refused(json_file, images, rf"annotation id 3 \(image id 101, img_01.png\): {message}")


def test_a_box_within_a_pixel_of_the_border_is_accepted(tmp_path):
    """Converted annotations may round a box edge just past the border."""
    from instfcn_d2.data.coco_json import check_coco_json

    def edit(data):
        _ann(data, 3)["bbox"] = [-0.5, 0, 96.8, 96]

    json_file, images = write_tiny_coco(tmp_path, num_images=2, edit=edit)
    check_coco_json(str(json_file), image_root=str(images))


def test_a_polygon_with_nan_is_refused(tmp_path):
    def edit(data):
        _ann(data, 1)["segmentation"] = [[10, 10, 30, 10, 30, math.nan], [1, 1, 5, 1, 5, 5]]

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    _refused(json_file, images, r"annotation id 1 \(image id 100, img_00.png\): segmentation polygon 0 has a coordinate that is not a finite number")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("iscrowd", 2, r"iscrowd 2 is not 0 or 1"),
        ("iscrowd", "0", r"iscrowd '0' is not 0 or 1"),
        ("iscrowd", None, r"no iscrowd"),
        ("area", -4.0, r"area -4.0 is negative"),
        ("area", math.nan, r"area nan is not a finite number"),
        ("area", None, r"no area"),
    ],
    ids=["crowd-2", "crowd-str", "crowd-missing", "area-negative", "area-nan", "area-missing"],
)
def test_bad_iscrowd_and_area_are_refused(tmp_path, field, value, message):
    """COCO's evaluation reads both: a missing one fails it at the end (KeyError), a negative area
    leaves the object out of every area range, an iscrowd other than 0/1 is read as a crowd by some
    readers and not by others."""
    def edit(data):
        if value is None:
            del _ann(data, 2)[field]
        else:
            _ann(data, 2)[field] = value

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    _refused(json_file, images, rf"annotation id 2 \(image id 100, img_00.png\): {message}")


def test_booleans_for_iscrowd_are_accepted(tmp_path):
    def edit(data):
        _ann(data, 2)["iscrowd"] = True
        _ann(data, 1)["iscrowd"] = False

    json_file, _ = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    assert check_coco_json(json_file)["annotations"] == 2


@pytest.mark.parametrize(
    "value, message",
    [(None, r"no 'width'"), (0, r"width 0 is not a positive integer"), (-96, r"width -96 is not a positive integer"),
     ("96", r"width '96' is not a positive integer"), (95.5, r"width 95.5 is not a positive integer")],
    ids=["missing", "zero", "negative", "string", "fraction"],
)
def test_bad_image_sizes_are_refused(tmp_path, value, message):
    def edit(data):
        if value is None:
            del data["images"][1]["width"]
        else:
            data["images"][1]["width"] = value

    json_file, images = write_tiny_coco(tmp_path, num_images=2, edit=edit)
    _refused(json_file, images, rf"image id 101 \(img_01.png\): {message}")


def test_sizes_written_as_whole_floats_are_accepted(tmp_path):
    def edit(data):
        data["images"][0]["width"] = 96.0

    json_file, images = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    assert apply_coco_json_config(_test_split(json_file, images))


# ---------------------------------------------------------------- image files


def _replace_image(images, name, image):
    image.save(f"{images}/{name}")


def _set_image(json_file, index, **fields):
    """Change the JSON's entry of image ``index`` (e.g. its file_name)."""
    with open(json_file) as f:
        data = json.load(f)
    data["images"][index].update(fields)
    with open(json_file, "w") as f:
        json.dump(data, f)


def test_a_16_bit_png_is_refused_naming_the_file(tmp_path):
    """detectron2's read_image converts 'I;16' to RGB by clipping at 255: a 16-bit image of
    values in the thousands read as nearly all white and was trained on."""
    json_file, images = write_tiny_coco(tmp_path, num_images=3)
    sixteen = (np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7).astype(np.uint16)
    _replace_image(images, "img_01.png", Image.fromarray(sixteen))
    assert Image.open(f"{images}/img_01.png").mode == "I;16"
    assert (read_image(f"{images}/img_01.png", "BGR") == 255).mean() > 0.9  # what training read
    text = _refused(json_file, images, r"image id 101 \([^)]*img_01.png\): mode 'I;16'")
    assert "1 image file" in text


@pytest.mark.parametrize("mode", ["I", "F", "I;16B"])
def test_other_high_bit_depth_modes_are_refused(tmp_path, mode):
    json_file, images = write_tiny_coco(tmp_path, num_images=1)
    values = np.linspace(0, 4000, 96 * 96).reshape(96, 96)
    image = Image.fromarray(values.astype(np.float32) if mode == "F" else values.astype(np.int32))
    image = image if mode in ("I", "F") else Image.fromarray(values.astype(np.uint16)).convert("I;16B")
    image.save(f"{images}/img_00.tif")
    assert Image.open(f"{images}/img_00.tif").mode == mode
    _set_image(json_file, 0, file_name="img_00.tif")
    _refused(json_file, images, rf"image id 100 \([^)]*img_00.tif\): mode '{mode}'")


def _lossless_variants(rgb):
    """Images of each 8-bit mode that detectron2 converts to RGB, and the RGB each one means."""
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    few_colours = (rgb // 128 * 255).astype(np.uint8)  # 8 colours: a palette holds them exactly
    binary = gray > 128
    return {
        "P": (Image.fromarray(few_colours).quantize(colors=8), few_colours),
        "L": (Image.fromarray(gray), np.repeat(gray[..., None], 3, axis=2)),
        "LA": (Image.fromarray(np.dstack([gray, np.full_like(gray, 200)]), mode="LA"), np.repeat(gray[..., None], 3, axis=2)),
        "RGBA": (Image.fromarray(np.dstack([rgb, np.full_like(gray, 255)])), rgb),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), rgb),
        "1": (Image.fromarray(binary), np.repeat(binary[..., None] * np.uint8(255), 3, axis=2)),
    }


def test_8_bit_modes_are_accepted_and_read_as_their_colours(tmp_path):
    """P, L, LA, RGBA, CMYK and 1 pass the check, and detectron2's read_image gives their colours
    (BGR order) exactly."""
    json_file, images = write_tiny_coco(tmp_path, num_images=6)
    rgb = np.asarray(Image.open(f"{images}/img_00.png"))
    variants = _lossless_variants(rgb)
    for i, (mode, (image, _)) in enumerate(variants.items()):
        name = f"img_{i:02d}.tif" if mode == "CMYK" else f"img_{i:02d}.png"
        image.save(f"{images}/{name}")
        if mode == "CMYK":  # PNG cannot hold CMYK: the JSON names the TIFF
            _set_image(json_file, i, file_name=name)
        assert Image.open(f"{images}/{name}").mode == mode
        expected = variants[mode][1]
        np.testing.assert_array_equal(read_image(f"{images}/{name}", "BGR"), expected[..., ::-1], err_msg=mode)
    assert check_coco_json(json_file, image_root=images)["images"] == 6


def test_an_image_of_another_size_than_the_json_says_is_refused(tmp_path):
    json_file, images = write_tiny_coco(tmp_path, num_images=2)
    _replace_image(images, "img_01.png", Image.new("RGB", (80, 96)))
    _refused(json_file, images, r"image id 101 \([^)]*img_01.png\): 80 x 96 \(width x height\) but the JSON says 96 x 96")


def test_exif_rotation_is_applied_before_comparing_sizes(tmp_path):
    """A JPEG stored 96 wide x 64 high with EXIF orientation 6 (rotate 90) is read 64 x 96 by
    detectron2's read_image: the JSON must say the rotated size."""
    json_file, images = write_tiny_coco(tmp_path, num_images=1, empty_images=(0,))
    exif = Image.Exif()
    exif[274] = 6
    Image.new("RGB", (96, 64), (10, 200, 30)).save(f"{images}/img_00.jpg", exif=exif.tobytes())
    assert read_image(f"{images}/img_00.jpg", "BGR").shape == (96, 64, 3)
    _set_image(json_file, 0, file_name="img_00.jpg", width=64, height=96)
    assert check_coco_json(json_file, image_root=images)["images"] == 1
    _set_image(json_file, 0, width=96, height=64)
    with pytest.raises(CocoAnnotationError, match=r"img_00.jpg\): 64 x 96 \(width x height, after its EXIF rotation\) but the JSON says 96 x 64"):
        check_coco_json(json_file, image_root=images)


def test_missing_and_unreadable_images_are_all_named(tmp_path):
    json_file, images = write_tiny_coco(tmp_path, num_images=4)
    (tmp_path / "images" / "img_02.png").unlink()
    (tmp_path / "images" / "img_03.png").write_bytes(b"not an image")
    text = _refused(json_file, images, r"2 image file")
    assert "img_02.png): no such file" in text and "img_03.png): not an image file PIL can read" in text


def test_images_are_checked_from_their_headers_once(tmp_path, monkeypatch):
    """No pixel is decoded, and a second check (the trainer, then each evaluator) reads nothing."""
    import PIL.ImageFile

    json_file, images = write_tiny_coco(tmp_path, num_images=3)
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"pixels decoded: {self.filename}")

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    check_coco_json(json_file, image_root=images)
    assert len(opened) == 3
    check_coco_json(json_file, image_root=images)
    assert len(opened) == 3


def test_a_registered_dataset_has_its_images_checked_too(tmp_path):
    """A JSON registered with register_coco_instances: its metadata's image_root is checked when
    the trainer or an evaluator checks the dataset."""
    json_file, images = write_tiny_coco(tmp_path, num_images=2)
    _replace_image(images, "img_00.png", Image.fromarray(np.full((96, 96), 3000, dtype=np.uint16)))
    name = "test_coco_json_checks_16_bit"
    register_coco_instances(name, {}, json_file, images)
    try:
        with pytest.raises(CocoAnnotationError, match=r"img_00.png\): mode 'I;16'"):
            check_coco_json_datasets([name])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
