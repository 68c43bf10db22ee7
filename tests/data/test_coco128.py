"""coco128: the derived val instances JSON and semantic label PNGs (instfcn_d2.data.convert_coco128),
its CLI (datasets/prepare_coco128.py) and the detectron2 registration (instfcn_d2.data.coco128),
checked against the real panoptic PNGs (and on a tiny synthetic copy for the rules and the error
paths)."""

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from instfcn_d2.data import coco128, convert_coco128
from instfcn_d2.data.paths import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]

# pycocotools' mask.decode under numpy 2, once per call: noise, not a problem of this code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _read_ids(png: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _read_label(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png))


# ----------------------------------------------------------------------------------------------
# The real data, converted once per module into the session cache


@pytest.fixture(scope="module")
def prepared(coco128_dir):
    paths = convert_coco128.prepare_coco128(coco128_dir, cache_root() / "coco128")
    with open(paths["val_json"]) as f:
        derived = json.load(f)
    with open(coco128_dir / "annotations/panoptic_val2017.json") as f:
        panoptic = json.load(f)
    with open(coco128_dir / "annotations/instances_train2017.json") as f:
        train = json.load(f)
    return {"paths": paths, "derived": derived, "panoptic": panoptic, "train": train}


@pytest.fixture(scope="module")
def val_ids(coco128_dir, prepared):
    """image_id -> panoptic segment ids ``(H, W)`` of every val image."""
    png_dir = coco128_dir / "annotations/panoptic_val2017"
    return {a["image_id"]: _read_ids(png_dir / a["file_name"]) for a in prepared["panoptic"]["annotations"]}


def _thing_ids(panoptic):
    return {c["id"] for c in panoptic["categories"] if c["isthing"] == 1}


def test_val_json_counts(prepared):
    derived, panoptic = prepared["derived"], prepared["panoptic"]
    things = _thing_ids(panoptic)
    anns = derived["annotations"]
    assert len(anns) == 712
    assert sum(a["iscrowd"] for a in anns) == 5
    expected = {
        a["image_id"]: sum(s["category_id"] in things for s in a["segments_info"])
        for a in panoptic["annotations"]
    }
    got = Counter(a["image_id"] for a in anns)
    assert {k: v for k, v in expected.items() if v} == dict(got)
    # Panoptic ids repeat across images; the derived ids must not (pycocotools indexes by id).
    assert sorted(a["id"] for a in anns) == list(range(1, 713))
    assert derived["images"] == panoptic["images"] and derived["licenses"] == panoptic["licenses"]
    assert [c["id"] for c in derived["categories"]] == sorted(things) and len(things) == 80
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)


def test_val_rle_masks_match_panoptic_png(prepared, val_ids):
    panoptic_segments = {
        (a["image_id"], s["id"]): s for a in prepared["panoptic"]["annotations"] for s in a["segments_info"]
    }
    for ann in prepared["derived"]["annotations"]:
        ids = val_ids[ann["image_id"]]
        seg = panoptic_segments[(ann["image_id"], ann["panoptic_segment_id"])]
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        png_mask = ids == ann["panoptic_segment_id"]
        assert mask.shape == ids.shape
        assert np.array_equal(mask, png_mask), ann["id"]
        assert int(mask_util.area(ann["segmentation"])) == int(png_mask.sum()) == ann["area"] == seg["area"]
        assert mask_util.toBbox(ann["segmentation"]).tolist() == ann["bbox"] == seg["bbox"]
        assert (ann["category_id"], ann["iscrowd"]) == (seg["category_id"], seg["iscrowd"])


def test_val_semantic_labels(prepared, val_ids):
    panoptic = prepared["panoptic"]
    contiguous = {cid: i for i, cid in enumerate(sorted(_thing_ids(panoptic)))}
    images = {img["id"]: img for img in panoptic["images"]}
    seen = Counter()
    for ann in panoptic["annotations"]:
        ids = val_ids[ann["image_id"]]
        label = _read_label(
            prepared["paths"]["sem_val"] / (Path(images[ann["image_id"]]["file_name"]).stem + ".png")
        )
        assert label.dtype == np.uint8 and label.shape == ids.shape
        assert np.all(label[ids == 0] == 255)
        seen["unlabelled"] += int((ids == 0).any())
        for s in ann["segments_info"]:
            values = np.unique(label[ids == s["id"]]).tolist()
            if s["iscrowd"]:
                kind, expected = "crowd", 255
            elif s["category_id"] in contiguous:
                kind, expected = "thing", contiguous[s["category_id"]] + 1
            else:
                kind, expected = "stuff", 0
            assert values == [expected], (ann["file_name"], s["id"], kind)
            seen[kind] += 1
    assert seen["thing"] == 707 and seen["crowd"] == 5 and seen["stuff"] > 0 and seen["unlabelled"] > 0


def test_train_semantic_labels_cover_instances(coco128_dir, prepared):
    from pycocotools.coco import COCO

    train = prepared["train"]
    contiguous = {cid: i for i, cid in enumerate(sorted(c["id"] for c in train["categories"]))}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco128_dir / "annotations/instances_train2017.json"))
    for img in train["images"]:
        label = _read_label(prepared["paths"]["sem_train"] / (Path(img["file_name"]).stem + ".png"))
        assert label.shape == (img["height"], img["width"]) and label.dtype == np.uint8
        anns = coco.imgToAnns.get(img["id"], [])
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        things = [(a, m) for a, m in zip(anns, masks) if not a["iscrowd"]]
        covered = np.zeros(label.shape, np.int32)
        for a, m in things:
            values = label[m]
            assert values.min() >= 1 and values.max() <= 80, (img["file_name"], a["id"])
            covered += m
        # Pixels of exactly one non-crowd instance carry its class; pixels of none are
        # background or (crowd) ignore.
        for a, m in things:
            alone = m & (covered == 1)
            assert np.all(label[alone] == contiguous[a["category_id"]] + 1), (img["file_name"], a["id"])
        crowd = np.zeros(label.shape, bool)
        for a, m in zip(anns, masks):
            crowd |= m & bool(a["iscrowd"])
        assert np.all(label[(covered == 0) & crowd] == 255)
        assert np.all(label[(covered == 0) & ~crowd] == 0)


def test_val_json_is_evaluable_by_cocoeval(prepared):
    """Ground truth scored as detections gives AP 1: the JSON is what COCOEvaluator can read."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(prepared["paths"]["val_json"]))
        dets = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "segmentation": a["segmentation"],
                "score": 1.0,
            }
            for a in gt.dataset["annotations"]
            if not a["iscrowd"]
        ]
        evaluator = COCOeval(gt, gt.loadRes(dets), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_prepare_is_idempotent(coco128_dir, prepared):
    json_path = prepared["paths"]["val_json"]
    png = next(prepared["paths"]["sem_train"].glob("*.png"))
    before = (json_path.stat().st_mtime_ns, png.stat().st_mtime_ns)
    again = convert_coco128.prepare_coco128(coco128_dir, cache_root() / "coco128")
    assert again == prepared["paths"]
    assert (json_path.stat().st_mtime_ns, png.stat().st_mtime_ns) == before
    assert not list(json_path.parent.rglob("*.tmp"))  # no temp file left behind


# ----------------------------------------------------------------------------------------------
# A tiny synthetic coco128: the overlap rule, stamps and the error messages


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _make_fake_coco128(base: Path) -> Path:
    """``base/coco128`` with one 6x8 val image (panoptic: person, crowd car, sky, unlabelled)
    and one 10x10 train image (big person, small car on it, crowd car at the bottom)."""
    root = base / "coco128"
    (root / "annotations/panoptic_val2017").mkdir(parents=True)
    categories = [
        {"id": 1, "name": "person", "supercategory": "person", "isthing": 1},
        {"id": 3, "name": "car", "supercategory": "vehicle", "isthing": 1},
        {"id": 119, "name": "sky", "supercategory": "sky", "isthing": 0},
    ]
    ids = np.zeros((6, 8), np.int64)
    ids[0:2, :] = 300  # sky
    ids[2:6, 0:3] = 70000  # person; id needs all three channels
    ids[3:6, 5:8] = 5  # crowd car
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "annotations/panoptic_val2017/000000000001.png")
    segments = [
        {"id": 300, "category_id": 119, "iscrowd": 0, "bbox": [0, 0, 8, 2], "area": 16},
        {"id": 70000, "category_id": 1, "iscrowd": 0, "bbox": [0, 2, 3, 4], "area": 12},
        {"id": 5, "category_id": 3, "iscrowd": 1, "bbox": [5, 3, 3, 3], "area": 9},
    ]
    panoptic = {
        "info": {"description": "fake"},
        "licenses": [{"id": 1, "name": "x", "url": ""}],
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 6, "width": 8, "license": 1}],
        "annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": segments}],
        "categories": categories,
    }
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(panoptic))
    person, car = _box(10, 10, 0, 8, 0, 8), _box(10, 10, 2, 5, 2, 5)
    crowd = _box(10, 10, 6, 10, 0, 10)
    train = {
        "info": {},
        "licenses": [],
        "images": [{"id": 7, "file_name": "000000000007.jpg", "height": 10, "width": 10}],
        "annotations": [
            # Listed small-first, to show that the order of the file does not decide.
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": _uncompressed_rle(car)},
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": _uncompressed_rle(person),
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 1,
                "segmentation": _uncompressed_rle(crowd),
            },
        ],
        "categories": [{k: c[k] for k in ("id", "name", "supercategory")} for c in categories[:2]],
    }
    for a in train["annotations"]:
        a["area"], a["bbox"] = 0, [0, 0, 1, 1]  # not read by the conversion
    (root / "annotations/instances_train2017.json").write_text(json.dumps(train))
    return root


def test_fake_semantic_rules(tmp_path):
    root = _make_fake_coco128(tmp_path)
    paths = convert_coco128.prepare_coco128(root, tmp_path / "out")
    val = _read_label(paths["sem_val"] / "000000000001.png")
    expected = np.full((6, 8), 255, np.uint8)  # unlabelled unless painted below
    expected[0:2, :] = 0
    expected[2:6, 0:3] = 1
    assert np.array_equal(val, expected)  # crowd car (rows 3-5, cols 5-7) stays 255

    train = _read_label(paths["sem_train"] / "000000000007.png")
    expected = np.zeros((10, 10), np.uint8)
    expected[6:10, :] = 255  # crowd...
    expected[0:8, 0:8] = 1  # ...but a non-crowd person over it (rows 6-7) is kept
    expected[2:5, 2:5] = 2  # the smaller car wins where it overlaps the person
    assert np.array_equal(train, expected)

    derived = json.loads(paths["val_json"].read_text())
    assert [(a["id"], a["category_id"], a["iscrowd"], a["area"]) for a in derived["annotations"]] == [
        (1, 1, 0, 12),
        (2, 3, 1, 9),
    ]
    assert [c["id"] for c in derived["categories"]] == [1, 3]


def test_fake_stamp_skips_then_redoes_on_newer_input(tmp_path):
    root = _make_fake_coco128(tmp_path)
    paths = convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))
    assert set(paths) == {"val_json", "sem_val"}
    first = paths["val_json"].stat().st_mtime_ns
    convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))
    assert paths["val_json"].stat().st_mtime_ns == first
    src = root / "annotations/panoptic_val2017.json"
    future = paths["val_json"].stat().st_mtime + 10
    os.utime(src, (future, future))  # an input newer than the stamp
    convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))
    assert paths["val_json"].stat().st_mtime_ns != first
    paths["val_json"].unlink()  # a missing output is remade too
    convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))
    assert paths["val_json"].is_file()


def test_fake_concurrent_prepare(tmp_path):
    """Two writers at once (force=True, so both really write): every file ends up whole."""
    root = _make_fake_coco128(tmp_path)
    out = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: convert_coco128.prepare_coco128(root, out, force=True), range(4)))
    assert all(r == results[0] for r in results)
    assert len(json.loads(results[0]["val_json"].read_text())["annotations"]) == 2
    assert _read_label(results[0]["sem_train"] / "000000000007.png").shape == (10, 10)
    assert not list(out.rglob("*.tmp"))


def _edit_panoptic(root: Path, edit):
    path = root / "annotations/panoptic_val2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_fake_missing_png_is_reported(tmp_path):
    root = _make_fake_coco128(tmp_path)
    (root / "annotations/panoptic_val2017/000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"panoptic PNG missing: .*000000000001\.png"):
        convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))


def test_fake_size_mismatch_is_reported(tmp_path):
    root = _make_fake_coco128(tmp_path)
    _edit_panoptic(root, lambda d: d["images"][0].update(height=7))
    with pytest.raises(ValueError, match=r"000000000001\.png is 6x8 .* is 7x8 in the JSON"):
        convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))


def test_fake_empty_segment_is_reported(tmp_path):
    root = _make_fake_coco128(tmp_path)
    extra = {"id": 999, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1}
    _edit_panoptic(root, lambda d: d["annotations"][0]["segments_info"].append(extra))
    with pytest.raises(ValueError, match=r"000000000001\.png: segment 999 \(category_id 1\) .* zero pixels"):
        convert_coco128.prepare_coco128(root, tmp_path / "out", splits=("val",))


def test_missing_root_for_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco128 folder not found at .*nowhere"):
        convert_coco128.prepare_coco128(tmp_path / "nowhere", tmp_path / "out")


def test_cli(tmp_path):
    root = _make_fake_coco128(tmp_path)
    script = REPO_ROOT / "datasets" / "prepare_coco128.py"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    run = subprocess.run(
        [sys.executable, str(script), "--root", str(root), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "train semantic labels: 1/1 images" in run.stderr  # progress
    assert f"val_json: {tmp_path / 'out' / 'instances_val2017.json'}" in run.stdout
    assert (tmp_path / "out/sem_train2017/000000000007.png").is_file()


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "prepare_coco128", REPO_ROOT / "datasets" / "prepare_coco128.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_help_and_missing_root(tmp_path, capsys):
    cli = _load_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--root" in out and "--output" in out and "--force" in out
    assert cli.main(["--root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 1
    assert "coco128 folder not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# detectron2 registration


@pytest.fixture
def catalogs():
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    yield DatasetCatalog, MetadataCatalog
    coco128.register_coco128()  # leave the default registration for whoever runs next


def test_register_loads_both_splits(coco128_dir, prepared, catalogs):
    DatasetCatalog, MetadataCatalog = catalogs
    coco128.register_coco128(coco128_dir.parent)
    coco128.register_coco128(coco128_dir.parent)  # registering twice is fine
    val, train = DatasetCatalog.get("coco128_val"), DatasetCatalog.get("coco128_train")
    assert len(val) == 100 and len(train) == 128
    assert sum(len(r["annotations"]) for r in val) == 712
    for r in val + train:
        assert Path(r["file_name"]).is_file() and Path(r["sem_seg_file_name"]).is_file()
        assert Path(r["sem_seg_file_name"]).stem == Path(r["file_name"]).stem

    meta = MetadataCatalog.get("coco128_val")
    assert meta.json_file == str(prepared["paths"]["val_json"]) and Path(meta.json_file).is_file()
    assert meta.image_root == str(coco128_dir / "val2017") and meta.evaluator_type == "coco"
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
    assert meta.stuff_classes == ["background"] + meta.thing_classes and meta.ignore_label == 255
    assert meta.thing_dataset_id_to_contiguous_id[90] == 79 and len(meta.thing_colors) == 80
    assert MetadataCatalog.get("coco128_train").json_file == str(
        coco128_dir / "annotations/instances_train2017.json"
    )

    # The semantic label under an instance's mask is its contiguous class + 1.
    rec = next(r for r in val if any(not a["iscrowd"] for a in r["annotations"]))
    label = _read_label(Path(rec["sem_seg_file_name"]))
    for a in rec["annotations"]:
        if not a["iscrowd"]:
            assert np.all(label[mask_util.decode(a["segmentation"]).astype(bool)] == a["category_id"] + 1)


def test_register_resolves_env_at_load_time(coco128_dir, prepared, catalogs, monkeypatch, tmp_path):
    DatasetCatalog, MetadataCatalog = catalogs
    session_cache = os.environ["INSTFCN_D2_CACHE"]
    monkeypatch.setenv("DETECTRON2_DATASETS", str(coco128_dir.parent / "not-here"))
    monkeypatch.setenv("INSTFCN_D2_CACHE", str(tmp_path / "other-cache"))
    coco128.register_coco128()
    assert MetadataCatalog.get("coco128_val").sem_seg_root.startswith(str(tmp_path / "other-cache"))
    assert MetadataCatalog.get("coco128_train").image_root.startswith(str(coco128_dir.parent / "not-here"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(coco128_dir.parent))
    monkeypatch.setenv("INSTFCN_D2_CACHE", session_cache)
    assert len(DatasetCatalog.get("coco128_train")) == 128
    assert len(DatasetCatalog.get("coco128_val")) == 100
    # The loader re-pointed the metadata at what it used, for COCOEvaluator.
    assert MetadataCatalog.get("coco128_val").json_file == str(prepared["paths"]["val_json"])
    assert MetadataCatalog.get("coco128_train").image_root == str(
        coco128_dir.parent / "coco128" / "train2017"
    )
    assert MetadataCatalog.get("coco128_val").sem_seg_root == str(prepared["paths"]["sem_val"])
    assert not (tmp_path / "other-cache" / "coco128" / "instances_val2017.json").exists()


def test_register_missing_root_error(tmp_path, catalogs, monkeypatch):
    DatasetCatalog, _ = catalogs
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    coco128.register_coco128()
    expected = (
        f"coco128 not found at {re.escape(str((tmp_path / 'coco128').resolve()))}: set DETECTRON2_DATASETS"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        DatasetCatalog.get("coco128_val")


def test_coco_evaluator_before_first_load(coco128_dir, catalogs, monkeypatch, tmp_path):
    """detectron2's tutorial order (evaluator, then loader) on a fresh cache: the evaluator finds
    no json_file, converts the dataset dicts, and so runs the loader, which makes the derived
    JSON and points the metadata at it."""
    from detectron2.evaluation import COCOEvaluator

    _, MetadataCatalog = catalogs
    monkeypatch.setenv("INSTFCN_D2_CACHE", str(tmp_path / "fresh"))
    coco128.register_coco128(coco128_dir.parent)
    assert MetadataCatalog.get("coco128_val").get("json_file") is None
    evaluator = COCOEvaluator("coco128_val", output_dir=str(tmp_path / "eval"))
    derived = tmp_path / "fresh" / "coco128" / "instances_val2017.json"
    assert MetadataCatalog.get("coco128_val").json_file == str(derived)
    assert len(evaluator._coco_api.anns) == 712
    assert "panoptic_segment_id" in next(iter(evaluator._coco_api.anns.values()))  # the derived file
    coco128.register_coco128(coco128_dir.parent)  # now the file exists: set at registration
    assert MetadataCatalog.get("coco128_val").json_file == str(derived)
