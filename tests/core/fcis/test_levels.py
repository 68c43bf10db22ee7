"""Score maps on several pyramid levels: each RoI is read from the level detectron2's ROIPooler
would pool it from, and every per-RoI method of the reader equals reading that level alone."""
import pytest
import torch
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from instfcn_d2.core.fcis import FCISLevelMaps, FCISMaps, FCISReader, PyramidLevels

C, K, M = 2, 3, 7
STRIDES = (4, 8, 16, 32)


def _level_maps(seed=0, size=128, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    levels = []
    for stride in STRIDES:
        side = size // stride
        io = torch.randn(2, K * K * 2 * (C + 1), side, side, generator=g, dtype=torch.float64)
        box = torch.randn(2, K * K * 4, side, side, generator=g, dtype=torch.float64)
        levels.append(FCISMaps(io.requires_grad_(requires_grad), box.requires_grad_(requires_grad)))
    return FCISLevelMaps(levels)


def _rois(n=40, seed=1, size=128):
    """RoIs of every size, 4 px to the whole image, on two images."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.rand(n, 1, generator=g) * (torch.log(torch.tensor(size * 1.0)) - 1.4) + 1.4)
    xy = torch.rand(n, 2, generator=g) * (size - side)
    batch = torch.randint(0, 2, (n, 1), generator=g).double()
    return torch.cat([batch, xy, xy + side * torch.tensor([1.0, 0.8])], dim=1).double()


def _reader(**changes):
    # a small canonical size, so that RoIs in a 128-px image fall on all four levels
    levels = PyramidLevels(STRIDES, canonical_box_size=28)
    return FCISReader(num_classes=C, group_size=K, mask_size=M, spatial_scale=1 / STRIDES[0], levels=levels, **changes)


def test_levels_are_detectron2s_assignment():
    levels = PyramidLevels(STRIDES)
    boxes = _rois(200, size=1024)[:, 1:].float()
    expected = assign_boxes_to_levels([Boxes(boxes)], 2, 5, 224, 4)  # what ROIPooler does for p2 ... p5
    assert torch.equal(levels.assign(boxes), expected)
    assert set(expected.tolist()) == {0, 1, 2, 3}  # the sample covers every level
    nan = torch.tensor([[float("nan")] * 4])
    assert levels.assign(nan).tolist() == [0]  # a diverged box reads a level instead of none


@pytest.mark.parametrize("strides", [(4,), (4, 16), (8, 4), (6, 12)])
def test_levels_must_be_consecutive_powers_of_two(strides):
    with pytest.raises(ValueError, match="strides"):
        PyramidLevels(strides)


def test_every_read_equals_reading_the_rois_level_alone():
    reader, maps, rois = _reader(), _level_maps(), _rois()
    assignment = reader.levels.assign(rois[:, 1:])
    assert len(set(assignment.tolist())) == 4
    classes = torch.arange(len(rois)) % (C + 1)
    io = reader.roi_inside_outside(maps, rois)
    logits = reader.roi_class_logits(maps, rois)
    deltas = reader.roi_box_deltas(maps, rois)
    of_classes = reader.roi_inside_outside_of_classes(maps, rois, classes)
    assert io.shape == (len(rois), 2, C + 1, M, M) and deltas.shape == (len(rois), 4)
    for level, stride in enumerate(STRIDES):
        rows = (assignment == level).nonzero().squeeze(1)
        alone = reader.replace(levels=None, spatial_scale=1 / stride)
        level_maps = maps.levels[level]
        torch.testing.assert_close(io[rows], alone.roi_inside_outside(level_maps, rois[rows]), rtol=0, atol=0)
        torch.testing.assert_close(logits[rows], alone.roi_class_logits(level_maps, rois[rows]), rtol=0, atol=0)
        torch.testing.assert_close(deltas[rows], alone.roi_box_deltas(level_maps, rois[rows]), rtol=0, atol=0)
        torch.testing.assert_close(
            of_classes[rows], alone.roi_inside_outside_of_classes(level_maps, rois[rows], classes[rows]), rtol=0, atol=0
        )
    # the native class read-out per level equals the chunked path through the assembled logits
    torch.testing.assert_close(logits, reader.roi_class_logits_chunked(maps, rois), rtol=1e-10, atol=1e-10)
    assert reader.roi_inside_outside(maps, rois[:0]).shape == (0, 2, C + 1, M, M)


def test_gradients_reach_only_the_levels_read():
    reader, maps = _reader(), _level_maps(requires_grad=True)
    rois = _rois()
    small = rois[reader.levels.assign(rois[:, 1:]) == 0]
    reader.roi_inside_outside(maps, small).sum().backward()
    assert maps.levels[0].inside_outside.grad.abs().sum() > 0
    assert all(m.inside_outside.grad is None or m.inside_outside.grad.abs().sum() == 0 for m in maps.levels[1:])


def test_detect_reads_the_levels_and_the_reader_survives_json():
    reader, rois = _reader(), _rois()
    maps = FCISLevelMaps([FCISMaps(m.inside_outside.float(), m.box.float()) for m in _level_maps().levels])
    first = rois[rois[:, 0] == 0].float()
    detections = reader.detect(maps, first, [len(first)], [(128, 128)])
    assert len(detections) == 1 and len(detections[0].boxes) > 0
    again = FCISReader.from_dict(reader.to_dict())
    assert again == reader
    torch.testing.assert_close(again.detect(maps, first, [len(first)], [(128, 128)])[0].masks, detections[0].masks)


def test_a_wrong_map_set_is_named():
    reader = _reader()
    with pytest.raises(ValueError, match="FCISLevelMaps"):
        reader.roi_inside_outside(_level_maps().levels[0], _rois())
    with pytest.raises(ValueError, match="3 levels"):
        reader.roi_inside_outside(FCISLevelMaps(_level_maps().levels[:3]), _rois())
    with pytest.raises(ValueError, match="finest"):
        _reader().replace(spatial_scale=1 / 8)
