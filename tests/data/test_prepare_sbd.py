"""SBD conversion (instfcn_d2.data.convert_sbd) on a tiny release written in SBD's .mat layout,
the bad-input errors, its command line (datasets/prepare_sbd.py), and the sbd_train / sbd_val
registration."""
import importlib.util
import json
import logging
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import scipy.sparse
from PIL import Image
from scipy.io import savemat

from conftest import REPO_ROOT

from instfcn_d2.data import convert_sbd, sbd

# pycocotools' mask.decode under numpy 2, once per call: noise, not a problem of this code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

PERSON, DOG, CAT, AEROPLANE, TV, CAR = 15, 12, 8, 1, 20, 7


def load_prepare_sbd():
    """Import ``datasets/prepare_sbd.py`` (datasets/ is scripts, not a package)."""
    path = REPO_ROOT / "datasets" / "prepare_sbd.py"
    spec = importlib.util.spec_from_file_location("instfcn_prepare_sbd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return load_prepare_sbd()


# ---------------------------------------------------------------------------------------------
# A tiny release in SBD's layout


def _boundaries(masks):
    """A (K, 1) cell of sparse boundary maps, as SBD stores them (not read by the converter)."""
    cell = np.empty((max(len(masks), 1), 1), dtype=object)
    for i in range(cell.shape[0]):
        cell[i, 0] = scipy.sparse.csc_matrix(masks[i] if i < len(masks) else np.zeros((2, 2)), dtype=np.uint8)
    return cell


def write_image(dataset, name, semantic, instance_ids, categories, jpg_size=None):
    """Write ``img/<name>.jpg``, ``cls/<name>.mat`` (GTcls) and ``inst/<name>.mat`` (GTinst)."""
    rng = np.random.default_rng(int(name.replace("_", "")))  # deterministic per image
    h, w = jpg_size or semantic.shape
    for sub in ("img", "cls", "inst"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(dataset / "img" / f"{name}.jpg")
    present = sorted(set(np.unique(semantic).tolist()) - {0, 255})
    savemat(
        dataset / "cls" / f"{name}.mat",
        {"GTcls": {
            "Boundaries": _boundaries([semantic == c for c in range(1, 21)]),
            "Segmentation": semantic.astype(np.uint8),
            "CategoriesPresent": np.array(present, dtype=np.uint8).reshape(-1, 1),
        }},
    )
    savemat(
        dataset / "inst" / f"{name}.mat",
        {"GTinst": {
            "Segmentation": instance_ids.astype(np.uint8),
            "Boundaries": _boundaries([instance_ids == k for k in range(1, len(categories) + 1)]),
            "Categories": np.array(categories, dtype=np.uint8).reshape(-1, 1),
        }},
    )


def tiny_release(root):
    """Three images: two in train.txt, one in val.txt. Returns ``{name: (semantic, [(class, mask)])}``
    with the instances the conversion must produce, in id order."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    expected = {}

    # 2008_000001 (12x16): person (id 1) with a 255 border in both maps, dog (id 2).
    ids = np.zeros((12, 16), np.uint8)
    ids[2:8, 1:5] = 1
    ids[1, 1:5] = 255  # SBD-style "ignore" border: not part of any instance
    ids[5:11, 9:15] = 2
    sem = np.zeros_like(ids)
    sem[ids == 1], sem[ids == 2], sem[ids == 255] = PERSON, DOG, 255
    write_image(dataset, "2008_000001", sem, ids, [PERSON, DOG])
    expected["2008_000001"] = (sem, [(PERSON, ids == 1), (DOG, ids == 2)])

    # 2008_000002 (10x10): one L-shaped cat (a single instance: Categories is 1x1).
    ids = np.zeros((10, 10), np.uint8)
    ids[1:9, 2:4] = 1
    ids[7:9, 2:8] = 1
    sem = np.where(ids == 1, CAT, 0).astype(np.uint8)
    write_image(dataset, "2008_000002", sem, ids, [CAT])
    expected["2008_000002"] = (sem, [(CAT, ids == 1)])

    # 2008_000003 (8x12, val): aeroplane (id 1), tvmonitor (id 2, no pixels: skipped), car (id 3).
    ids = np.zeros((8, 12), np.uint8)
    ids[0:3, 0:12] = 1
    ids[4:8, 6:9] = 3
    sem = np.zeros_like(ids)
    sem[ids == 1], sem[ids == 3] = AEROPLANE, CAR
    write_image(dataset, "2008_000003", sem, ids, [AEROPLANE, TV, CAR])
    expected["2008_000003"] = (sem, [(AEROPLANE, ids == 1), (CAR, ids == 3)])

    (dataset / "train.txt").write_text("2008_000001\n2008_000002\n")
    (dataset / "val.txt").write_text("2008_000003\n")
    return root / "benchmark_RELEASE", expected


@pytest.fixture
def release(tmp_path):
    return tiny_release(tmp_path / "data")


@pytest.fixture
def converted(release, tmp_path, caplog):
    rel, expected = release
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="instfcn_d2.data.convert_sbd"):
        written = convert_sbd.prepare_sbd(rel, out)
    return rel, out, expected, written, caplog.records


# ---------------------------------------------------------------------------------------------
# The conversion


def test_json_categories_images_and_counts(converted):
    rel, out, expected, written, _ = converted
    assert written == {"train": out / "annotations/sbd_train.json", "val": out / "annotations/sbd_val.json"}
    train = json.loads(written["train"].read_text())
    val = json.loads(written["val"].read_text())
    for data in (train, val):
        assert [c["id"] for c in data["categories"]] == list(range(1, 21))
        assert [c["name"] for c in data["categories"]] == list(sbd.VOC_CLASSES)
        assert data["categories"][PERSON - 1]["name"] == "person"
    assert train["images"] == [
        {"id": 1, "file_name": "2008_000001.jpg", "height": 12, "width": 16},
        {"id": 2, "file_name": "2008_000002.jpg", "height": 10, "width": 10},
    ]
    assert val["images"] == [{"id": 1, "file_name": "2008_000003.jpg", "height": 8, "width": 12}]
    assert len(train["annotations"]) == 3 and len(val["annotations"]) == 2  # tvmonitor skipped
    assert [a["category_id"] for a in train["annotations"]] == [PERSON, DOG, CAT]
    assert [a["category_id"] for a in val["annotations"]] == [AEROPLANE, CAR]
    assert [a["sbd_instance_id"] for a in val["annotations"]] == [1, 3]
    assert [a["id"] for a in train["annotations"]] == [1, 2, 3]
    assert all(a["iscrowd"] == 0 for a in train["annotations"] + val["annotations"])


def test_rle_bbox_area_match_the_written_masks(converted):
    rel, out, expected, written, _ = converted
    for split, names in (("train", ["2008_000001", "2008_000002"]), ("val", ["2008_000003"])):
        data = json.loads(written[split].read_text())
        anns = data["annotations"]
        want = [(img_id, c, m) for img_id, n in enumerate(names, 1) for c, m in expected[n][1]]
        assert len(anns) == len(want)
        for a, (img_id, category, mask) in zip(anns, want):
            assert a["image_id"] == img_id and a["category_id"] == category
            assert isinstance(a["segmentation"]["counts"], str)
            decoded = mask_util.decode(a["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, mask)
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == mask.sum()
    # the L-shaped cat: rows 1..8, cols 2..7 -> [x, y, w, h] = [2, 1, 6, 8], 16 + 8 pixels
    cat = json.loads(written["train"].read_text())["annotations"][2]
    assert cat["bbox"] == [2.0, 1.0, 6.0, 8.0] and cat["area"] == 8 * 2 + 2 * 4


def test_semantic_pngs(converted):
    rel, out, expected, _, _ = converted
    for split, name in (("train", "2008_000001"), ("train", "2008_000002"), ("val", "2008_000003")):
        png = out / "sem_seg" / split / f"{name}.png"
        label = np.asarray(Image.open(png))
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, expected[name][0])
    first = np.asarray(Image.open(out / "sem_seg/train/2008_000001.png"))
    assert set(np.unique(first).tolist()) == {0, DOG, PERSON, 255}
    assert sorted(p.name for p in (out / "sem_seg/train").iterdir()) == ["2008_000001.png", "2008_000002.png"]


def test_zero_area_instance_warns_with_file_and_instance(converted):
    rel, *_, records = converted
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f"{rel / 'dataset/inst/2008_000003.mat'}: instance 2 (tvmonitor) has no pixels; skipped"]
    progress = [r.getMessage() for r in records if "images (" in r.getMessage()]
    assert progress == ["sbd train: 2/2 images (100%), 3 instances", "sbd val: 1/1 images (100%), 2 instances"]


def test_up_to_date_split_is_skipped_unless_forced(converted):
    rel, out, _, written, _ = converted
    before = written["val"].stat().st_mtime_ns
    (out / "sem_seg/val/2008_000003.png").unlink()
    convert_sbd.prepare_sbd(rel, out, splits=["val"])
    assert written["val"].stat().st_mtime_ns == before
    assert not (out / "sem_seg/val/2008_000003.png").exists()
    convert_sbd.prepare_sbd(rel, out, splits=["val"], force=True)
    assert (out / "sem_seg/val/2008_000003.png").exists()


def test_other_list_file_reconverts(converted, tmp_path):
    rel, out, _, written, _ = converted
    only_one = tmp_path / "val_subset.txt"
    only_one.write_text("2008_000002\n")
    convert_sbd.prepare_sbd(rel, out, splits=["val"], lists={"val": only_one})
    val = json.loads(written["val"].read_text())
    assert [i["file_name"] for i in val["images"]] == ["2008_000002.jpg"]
    assert val["info"]["list_file"] == str(only_one.resolve())


def test_cli(cli, release, tmp_path, capsys):
    rel, _ = release
    out = tmp_path / "cli_out"
    assert cli.main(["--root", str(rel), "--output", str(out), "--splits", "val"]) == 0
    assert capsys.readouterr().out.strip() == f"val: {out / 'annotations/sbd_val.json'}"
    assert cli.main(["--root", str(tmp_path / "nowhere"), "--output", str(out)]) == 1
    assert f"{tmp_path / 'nowhere' / 'dataset'} is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "benchmark_RELEASE" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file at fault


def _rewrite_inst(dataset, name, ids, categories):
    savemat(
        dataset / "inst" / f"{name}.mat",
        {"GTinst": {"Segmentation": ids.astype(np.uint8), "Boundaries": _boundaries([]),
                    "Categories": np.array(categories, dtype=np.uint8).reshape(-1, 1)}},
    )


def test_missing_mat(release, tmp_path):
    rel, _ = release
    path = rel / "dataset/inst/2008_000002.mat"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"SBD annotation file missing: {re.escape(str(path))}"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["train"])


def test_instance_id_without_category(release, tmp_path):
    rel, _ = release
    ids = np.zeros((10, 10), np.uint8)
    ids[0:2, 0:2], ids[5:7, 5:7] = 1, 3  # id 3, but only 2 categories
    _rewrite_inst(rel / "dataset", "2008_000002", ids, [CAT, DOG])
    path = rel / "dataset/inst/2008_000002.mat"
    with pytest.raises(convert_sbd.SBDFormatError, match=rf"{re.escape(str(path))}: instance id\(s\) \[3\] .* have no category \(GTinst.Categories lists 2\)"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["train"])


@pytest.mark.parametrize("category", [0, 21])
def test_category_outside_1_to_20(release, tmp_path, category):
    rel, _ = release
    ids = np.zeros((10, 10), np.uint8)
    ids[0:2, 0:2] = 1
    _rewrite_inst(rel / "dataset", "2008_000002", ids, [category])
    path = rel / "dataset/inst/2008_000002.mat"
    with pytest.raises(convert_sbd.SBDFormatError, match=f"{re.escape(str(path))}: instance 1 has category {category}, outside 1..20"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["train"])


def test_label_size_differs_from_image(release, tmp_path):
    rel, _ = release
    dataset = rel / "dataset"
    ids = np.zeros((10, 10), np.uint8)
    ids[2:5, 2:5] = 1
    write_image(dataset, "2008_000002", np.where(ids == 1, CAT, 0), ids, [CAT], jpg_size=(10, 11))
    with pytest.raises(convert_sbd.SBDFormatError, match=f"{re.escape(str(dataset / 'cls/2008_000002.mat'))}: GTcls.Segmentation is 10x10 .* image is 10x11"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["train"])


def test_bad_semantic_value_and_missing_field(release, tmp_path):
    rel, _ = release
    path = rel / "dataset/cls/2008_000003.mat"
    savemat(path, {"GTcls": {"Segmentation": np.full((8, 12), 30, np.uint8)}})
    with pytest.raises(convert_sbd.SBDFormatError, match=rf"{re.escape(str(path))}: GTcls.Segmentation has values \[30\]"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["val"])
    savemat(path, {"GTcls": {"Boundaries": _boundaries([])}})
    with pytest.raises(convert_sbd.SBDFormatError, match=rf"{re.escape(str(path))}: struct 'GTcls' lacks field\(s\) \['Segmentation'\]"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["val"])


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_list_file(release, tmp_path, content):
    rel, _ = release
    path = rel / "dataset/val.txt"
    path.write_text(content)
    with pytest.raises(convert_sbd.SBDFormatError, match=f"SBD list file {re.escape(str(path))} is empty"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["val"])


def test_missing_image(release, tmp_path):
    rel, _ = release
    path = rel / "dataset/img/2008_000003.jpg"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"SBD image missing: {re.escape(str(path))}"):
        convert_sbd.prepare_sbd(rel, tmp_path / "o", splits=["val"])


# ---------------------------------------------------------------------------------------------
# detectron2 registration


@pytest.fixture
def restore_sbd_registration():
    yield
    sbd.register_sbd()  # back to the import-time registration (env-resolved paths)


def test_register_and_load(converted, restore_sbd_registration):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    rel, out, expected, _, _ = converted
    sbd.register_sbd(root=rel.parent, output=out)
    meta = MetadataCatalog.get("sbd_train")
    assert meta.evaluator_type == "sbd" and meta.ignore_label == 255
    assert meta.thing_classes == list(sbd.VOC_CLASSES)
    assert meta.stuff_classes == ["background"] + list(sbd.VOC_CLASSES)
    assert meta.json_file == str(out / "annotations/sbd_train.json")  # present: set at registration
    records = DatasetCatalog.get("sbd_train")
    assert [r["file_name"] for r in records] == [str(rel / "dataset/img" / f"2008_00000{i}.jpg") for i in (1, 2)]
    assert [r["sem_seg_file_name"] for r in records] == [str(out / "sem_seg/train" / f"2008_00000{i}.png") for i in (1, 2)]
    # contiguous ids: person (15) -> 14, dog (12) -> 11, cat (8) -> 7
    assert [a["category_id"] for r in records for a in r["annotations"]] == [14, 11, 7]
    mask = mask_util.decode(records[1]["annotations"][0]["segmentation"]).astype(bool)
    np.testing.assert_array_equal(mask, expected["2008_000002"][1][0][1])
    assert meta.sem_seg_root == str(out / "sem_seg/train")


def test_unconverted_dataset_names_path_and_command(release, tmp_path, restore_sbd_registration):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    rel, _ = release
    out = tmp_path / "not_converted"
    sbd.register_sbd(root=rel.parent, output=out)
    assert "json_file" not in MetadataCatalog.get("sbd_val").as_dict()  # COCOEvaluator will convert
    expected_json = (out / "annotations/sbd_val.json").resolve()
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("sbd_val")
    msg = str(info.value)
    assert str(expected_json) in msg
    assert f"python datasets/prepare_sbd.py --root {rel} --output {out}" in msg


def test_converted_split_evaluates_with_region_ap_and_coco(converted, restore_sbd_registration, tmp_path):
    """End to end: the trainer's evaluators for an FCIS model on the converted sbd_train, fed the
    ground truth as predictions (plus one false positive), read the JSON and masks consistently."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.engine.trainer import build_evaluators

    rel, out, _, _, _ = converted
    sbd.register_sbd(root=rel.parent, output=out)
    cfg = get_instfcn_cfg(opts=["MODEL.META_ARCHITECTURE", "FCIS", "OUTPUT_DIR", str(tmp_path)])
    records = DatasetCatalog.get("sbd_train")
    evaluator = build_evaluators(cfg, "sbd_train", output_folder=str(tmp_path / "eval"))  # distributed=True:
    # detectron2's gather is the identity in a single process
    evaluator.reset()
    for r in records:
        h, w = r["height"], r["width"]
        masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in r["annotations"]]
        classes = [a["category_id"] for a in r["annotations"]]
        if r["image_id"] == 2:  # a low-scoring person on the cat image: a false positive
            masks.append(np.ones((h, w), bool))
            classes.append(PERSON - 1)
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        ys_xs = [np.nonzero(m) for m in masks]
        inst.pred_boxes = Boxes(torch.tensor(
            [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in ys_xs], dtype=torch.float32))
        inst.scores = torch.tensor([0.9] * len(r["annotations"]) + [0.1] * (len(masks) - len(r["annotations"])))
        inst.pred_classes = torch.tensor(classes)
        evaluator.process([{"image_id": r["image_id"], "file_name": r["file_name"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    region = results["segm_voc"]
    # person, dog, cat each found first (the extra person ranks after the true one): AP 100
    for name in ("person", "dog", "cat"):
        assert region[f"AP50-{name}"] == pytest.approx(100.0) and region[f"AP70-{name}"] == pytest.approx(100.0)
    assert np.isnan(region["AP50-aeroplane"])  # no aeroplane in train: left out of the mean
    assert region["mAPr@0.5"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
