"""Semantic labels derived from instance masks (instfcn_d2.data.semantic_from_instances), on
hand-made masks: the overlap rule, crowd regions, an empty image, and the rasterisation of
polygons cut by a crop."""
import numpy as np
import pytest

from instfcn_d2.data.semantic_from_instances import (
    polygons_to_mask,
    segmentation_to_mask,
    semantic_from_annotations,
    semantic_from_instances,
)


def _box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_inside_is_class_plus_one_outside_is_background():
    a, b = _box((6, 8), 0, 2, 0, 2), _box((6, 8), 4, 6, 5, 8)
    labels = semantic_from_instances([a, b], [0, 2])
    expected = np.zeros((6, 8), np.int64)
    expected[0:2, 0:2] = 1
    expected[4:6, 5:8] = 3
    assert labels.dtype == np.int64 and np.array_equal(labels, expected)


@pytest.mark.parametrize("small_first", [True, False])
def test_overlap_the_smaller_instance_wins_whatever_the_order(small_first):
    big, small = _box((10, 10), 0, 8, 0, 8), _box((10, 10), 5, 10, 5, 10)  # 64 px and 25 px
    masks, classes = ([small, big], [1, 0]) if small_first else ([big, small], [0, 1])
    labels = semantic_from_instances(masks, classes)
    assert (labels[small] == 2).all()  # the whole small instance, overlap included
    assert (labels[big & ~small] == 1).all()
    assert (labels[~big & ~small] == 0).all()


def test_equal_areas_the_later_annotation_wins():
    a, b = _box((4, 4), 0, 2, 0, 4), _box((4, 4), 1, 3, 0, 4)
    assert semantic_from_instances([a, b], [0, 1])[1].tolist() == [2, 2, 2, 2]
    assert semantic_from_instances([b, a], [1, 0])[1].tolist() == [1, 1, 1, 1]


def test_crowd_is_ignored_except_under_an_instance():
    crowd, person = _box((8, 8), 0, 8, 0, 6), _box((8, 8), 2, 4, 2, 4)
    # the crowd region is larger, smaller or listed after: the instance keeps its label
    for masks, classes, flags in (([crowd, person], [0, 0], [1, 0]), ([person, crowd], [0, 0], [0, 1])):
        labels = semantic_from_instances(masks, classes, flags, ignore_value=255)
        assert (labels[person] == 1).all()
        assert (labels[crowd & ~person] == 255).all()
        assert (labels[:, 6:] == 0).all()
    assert (semantic_from_instances([crowd], [0], [True], ignore_value=7)[crowd] == 7).all()


def test_empty_image_is_background_and_needs_its_size():
    labels = semantic_from_instances([], [], image_size=(3, 5))
    assert labels.shape == (3, 5) and not labels.any()
    with pytest.raises(ValueError, match="no masks and no image_size"):
        semantic_from_instances([], [])
    # an image with only a crowd region: no background left where it is
    crowd = _box((3, 5), 0, 3, 0, 2)
    assert (semantic_from_instances([crowd], [0], [1])[crowd] == 255).all()


def test_bad_inputs_are_errors():
    a = _box((4, 4), 0, 2, 0, 2)
    with pytest.raises(ValueError, match="mask 1 has shape"):
        semantic_from_instances([a, np.zeros((3, 4), bool)], [0, 0])
    with pytest.raises(ValueError, match="one each per instance"):
        semantic_from_instances([a], [0, 1])
    with pytest.raises(ValueError, match="class 254 cannot be labelled"):
        semantic_from_instances([a], [254], ignore_value=255)


def test_from_annotations_polygons_rle_and_crowd():
    rle = {"size": [8, 8], "counts": [0, 8, 56]}  # uncompressed: column 0 (column-major runs)
    anns = [
        {"category_id": 1, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "iscrowd": 0},
        {"category_id": 0, "segmentation": rle, "iscrowd": 1},
    ]
    labels = semantic_from_annotations(anns, (8, 8), ignore_value=9)
    assert (labels[2:6, 2:6] == 2).all() and (labels[:, 0] == 9).all()
    assert labels.sum() == 16 * 2 + 8 * 9
    with pytest.raises(ValueError, match="annotation 0 .*no 'segmentation'"):
        semantic_from_annotations([{"category_id": 0}], (8, 8))
    with pytest.raises(ValueError, match=r"annotation 0 .*without a polygon of >= 3 points"):
        semantic_from_annotations([{"category_id": 0, "segmentation": [[]]}], (8, 8))
    with pytest.raises(ValueError, match=r"RLE segmentation of size \[8, 8\] on an image of 4x8"):
        segmentation_to_mask(rle, 4, 8)


def test_polygons_cut_by_the_image_border_are_exact():
    """A polygon reaching outside the image gives the pixels of the uncut polygon cropped
    (pycocotools alone moves outside vertices onto its canvas, up to a pixel off)."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        poly = rng.uniform(-10, 74, 12)
        reference = polygons_to_mask([poly + 20], 120, 120)[20 + 17 : 20 + 49, 20 + 13 : 20 + 45]
        cut = polygons_to_mask([poly - np.tile([13, 17], 6)], 32, 32)
        assert np.array_equal(cut, reference)
