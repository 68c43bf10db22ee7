"""The synthetic shapes set: determinism, annotation consistency, variety, caching, catalogs."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instfcn_d2.data import synthetic
from instfcn_d2.data.synthetic import (
    SHAPE_CLASSES,
    generate_synthetic_shapes,
    register_synthetic_shapes,
    sample_shapes_image,
    synthetic_shapes_root,
)

SIZE = 128
# pycocotools' decode trips numpy 2's __array__ copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _files(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """4-neighbour contact between two masks."""
    return bool(
        (a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any() or (a[:, 1:] & b[:, :-1]).any() or (a[:, :-1] & b[:, 1:]).any()
    )


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_val")
    json_file = generate_synthetic_shapes(out, "val", num_images=12, image_size=SIZE, seed=3)
    return out, json.loads(json_file.read_text())


@pytest.fixture(scope="module")
def samples():
    return [sample_shapes_image(SIZE, 0, "train", i) for i in range(60)]


def test_generation_is_byte_identical(tmp_path, val_set):
    out, _ = val_set
    generate_synthetic_shapes(tmp_path, "val", num_images=12, image_size=SIZE, seed=3)
    first, second = _files(out), _files(tmp_path)
    assert len(first) == 2 * 12 + 1
    assert first == second


def test_seed_and_split_change_the_images():
    a = sample_shapes_image(SIZE, 0, "train", 0).image
    assert not np.array_equal(a, sample_shapes_image(SIZE, 1, "train", 0).image)
    assert not np.array_equal(a, sample_shapes_image(SIZE, 0, "val", 0).image)
    assert not np.array_equal(a, sample_shapes_image(SIZE, 0, "train", 1).image)


def test_coco_json_is_consistent_with_masks_and_pngs(val_set):
    from pycocotools import mask as mask_util

    out, coco = val_set
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert len(coco["images"]) == 12
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for ann in coco["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == [SIZE, SIZE]
        assert ann["iscrowd"] == 0
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert int(mask.sum()) == ann["area"] >= synthetic.MIN_VISIBLE_PIXELS
        ys, xs = np.nonzero(mask)
        tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == [float(v) for v in tight]
    for img in coco["images"]:
        rgb = np.asarray(Image.open(out / "val" / img["file_name"]))
        sem = np.asarray(Image.open(out / "sem_val" / img["file_name"]))
        assert rgb.shape == (img["height"], img["width"], 3) == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        assert sem.shape == (SIZE, SIZE) and sem.dtype == np.uint8


def test_semantic_png_is_class_of_the_visible_instance(val_set):
    from pycocotools import mask as mask_util

    out, coco = val_set
    for img in coco["images"]:
        sem = np.asarray(Image.open(out / "sem_val" / img["file_name"]))
        expected = np.zeros((SIZE, SIZE), dtype=np.int64)
        covered = np.zeros((SIZE, SIZE), dtype=np.int64)
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert 1 <= len(anns) <= synthetic.MAX_INSTANCES
        for ann in anns:
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            expected[mask] = ann["category_id"]
            covered += mask
        assert covered.max() == 1, "visible masks of one image must be disjoint"
        np.testing.assert_array_equal(sem, expected)


def test_visible_masks_follow_the_occlusion_and_drop_rules(samples):
    for s in samples:
        later = np.zeros((SIZE, SIZE), dtype=bool)
        for full, visible in zip(reversed(s.full_masks), reversed(s.visible_masks)):
            np.testing.assert_array_equal(visible, full & ~later)
            assert visible.sum() >= synthetic.MIN_VISIBLE_PIXELS
            assert visible.sum() >= synthetic.MIN_VISIBLE_FRACTION * full.sum()
            later |= full
        # Nothing painted outside the annotated shapes: sem > 0 exactly on the union of full masks.
        np.testing.assert_array_equal(s.sem_seg > 0, later)


def test_shapes_stand_out_from_their_surroundings(samples):
    contrasts = []
    for s in samples:
        img = s.image.astype(np.float64)
        for vis in s.visible_masks:
            ring = synthetic._dilate(vis, 2) & ~synthetic._dilate(vis, 1) & (s.sem_seg == 0)
            if ring.sum() >= 10:
                contrasts.append(np.linalg.norm(img[vis].mean(0) - img[ring].mean(0)))
    assert np.median(contrasts) > 60


def test_set_has_the_required_variety(samples):
    classes = [c for s in samples for c in s.classes]
    areas = [int(m.sum()) for s in samples for m in s.visible_masks]
    assert set(classes) == set(range(len(SHAPE_CLASSES)))
    assert min(areas) < 150  # small instances (~12 px across)
    extents = [
        max(np.ptp(np.nonzero(m.any(0))[0]), np.ptp(np.nonzero(m.any(1))[0])) + 1 for s in samples for m in s.visible_masks
    ]
    assert max(extents) >= 0.55 * SIZE  # large instances
    counts = [len(s.classes) for s in samples]
    assert min(counts) == 1 and max(counts) >= 5

    overlapping = touching = 0
    for s in samples:
        n = len(s.classes)
        for i in range(n):
            for j in range(i + 1, n):
                if s.classes[i] != s.classes[j]:
                    continue
                if (s.full_masks[i] & s.full_masks[j]).any():
                    overlapping += 1
                elif _adjacent(s.full_masks[i], s.full_masks[j]):
                    touching += 1
    assert overlapping >= 3 and touching >= 3, (overlapping, touching)


def test_bad_parameters_are_rejected():
    with pytest.raises(TypeError, match="unknown parameter"):
        synthetic_shapes_root(num_images=3)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_shapes_root(image_size=8)
    with pytest.raises(TypeError, match="num_val"):
        synthetic_shapes_root(num_val=2.5)


def _root_in_subprocess(cache: str, params: dict) -> str:
    os.environ["INSTFCN_D2_CACHE"] = cache
    return str(synthetic_shapes_root(**params))


def test_cache_is_generated_once_and_safe_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTFCN_D2_CACHE", str(tmp_path))
    params = {"image_size": 64, "num_train": 3, "num_val": 2, "seed": 5}
    # fork: the children need no re-import of torch/detectron2 (spawn costs seconds per child).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(2) as pool:
        roots = pool.starmap(_root_in_subprocess, [(str(tmp_path), params)] * 2)
    assert roots[0] == roots[1]
    root = Path(roots[0])
    assert root.parent == tmp_path and root.name.startswith("shapes_v1_")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [root.name]
    assert sorted(p.name for p in root.iterdir()) == ["params.json", "sem_train", "sem_val", "train", "train.json", "val", "val.json"]
    assert len(list((root / "train").iterdir())) == 3 and len(list((root / "sem_val").iterdir())) == 2
    # Second call: cached, nothing rewritten.
    mtime = (root / "val.json").stat().st_mtime_ns
    assert synthetic_shapes_root(**params) == root
    assert (root / "val.json").stat().st_mtime_ns == mtime
    assert synthetic_shapes_root(**{**params, "seed": 6}) != root


def test_a_waiting_process_finds_the_published_folder(tmp_path, monkeypatch):
    """While one process holds the generation lock, another waits; once the folder is published
    and the lock released, it returns that folder without generating it again."""
    from iopath.common.file_io import file_lock

    params = {"image_size": 32, "num_train": 1, "num_val": 1, "seed": 7}
    monkeypatch.setenv("INSTFCN_D2_CACHE", str(tmp_path / "probe"))
    name = synthetic_shapes_root(**params).name  # the folder name the cache uses for params
    cache = tmp_path / "cache"
    cache.mkdir()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(1) as pool:
        with file_lock(str(cache / f".{name}")):  # what a generating process holds
            waiting = pool.apply_async(_root_in_subprocess, (str(cache), params))
            with pytest.raises(mp.TimeoutError):
                waiting.get(timeout=1.5)  # blocked on the lock
            for split in ("train", "val"):  # publish, as the generating process would
                generate_synthetic_shapes(cache / name, split, 1, 32, 7)
            mtime = (cache / name / "val.json").stat().st_mtime_ns
        assert waiting.get(timeout=60) == str(cache / name)
    assert sorted(p.name for p in cache.iterdir()) == [f".{name}.lock", name]  # no temp folder made
    assert (cache / name / "val.json").stat().st_mtime_ns == mtime


def test_losing_the_publish_race_keeps_the_winner(tmp_path):
    final, tmp = tmp_path / "final", tmp_path / "tmp"
    (final / "train").mkdir(parents=True)
    (tmp / "train").mkdir(parents=True)
    assert synthetic._publish(tmp, final) == final
    assert final.is_dir() and not tmp.exists()


# ----------------------------------------------------------------------------------------------
# detectron2 catalogs
# ----------------------------------------------------------------------------------------------
def test_registration_is_lazy_idempotent_and_loads(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    monkeypatch.setenv("INSTFCN_D2_CACHE", str(tmp_path))
    params = {"image_size": 64, "num_train": 2, "num_val": 3, "seed": 1}
    names = register_synthetic_shapes("test_shapes", **params)
    assert names == {"train": "test_shapes_train", "val": "test_shapes_val"}
    assert register_synthetic_shapes("test_shapes", **params) == names  # idempotent
    assert not list(tmp_path.glob("shapes_v1_*")), "registration must not generate anything"

    meta = MetadataCatalog.get("test_shapes_val")
    assert meta.thing_classes == list(SHAPE_CLASSES)
    assert meta.stuff_classes == ["background"] + list(SHAPE_CLASSES)
    assert len(meta.thing_colors) == len(SHAPE_CLASSES)
    assert meta.evaluator_type == "coco" and meta.ignore_label == 255
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}

    dicts = DatasetCatalog.get("test_shapes_val")
    assert len(dicts) == 3
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
        assert (d["height"], d["width"]) == (64, 64)
        assert d["annotations"]
        for a in d["annotations"]:
            assert 0 <= a["category_id"] < len(SHAPE_CLASSES)
            assert isinstance(a["segmentation"], dict) and a["iscrowd"] == 0
    root = synthetic_shapes_root(**params)
    assert meta.json_file == str(root / "val.json") and os.path.isfile(meta.json_file)
    assert meta.image_root == str(root / "val")

    # Other parameters replace the registration instead of raising.
    register_synthetic_shapes("test_shapes", **{**params, "num_val": 1})
    assert len(DatasetCatalog.get("test_shapes_val")) == 1
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_default_names_are_registered():
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_synthetic_shapes()
    assert {"instfcn_shapes_train", "instfcn_shapes_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("instfcn_shapes_val").synthetic_params == synthetic.DEFAULT_PARAMS
