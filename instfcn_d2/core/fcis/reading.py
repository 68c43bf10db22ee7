"""How FCIS reads its maps per RoI, and its test-time pipeline from RoIs to detections.

:class:`FCISReader` is a part, not a layer: frozen settings (``MODEL.FCIS``'s per-RoI and test
keys) plus the functions that read :class:`FCISMaps` with them. It has no parameters and needs no
detectron2. The heads own one (``FCISROIHeads.reader``), the exporter writes it into
``deploy.json`` (:meth:`FCISReader.to_dict`) and deployment loads it back
(:meth:`FCISReader.from_dict`): one object, the same code, eager and deployed.

- :meth:`FCISReader.roi_inside_outside` / :meth:`~FCISReader.roi_inside_outside_of_classes`: the
  assembled ``(R, 2, C+1, M, M)`` inside/outside logits, or those of one class per RoI (the two
  methods BiSeg's reader overrides);
- :meth:`~FCISReader.roi_class_logits`, :meth:`~FCISReader.roi_box_deltas`: class logits (FCIS's
  read by the native ``ps_roi_class_logits``, another reader's in chunks of RoIs) and R-FCN box
  deltas;
- :meth:`~FCISReader.detect`: test time: the RoIs and their box-regressed versions are scored,
  then :mod:`.inference` (per-class NMS, mask voting, the top detections) per image.

With :attr:`FCISReader.levels` set the maps are :class:`FCISLevelMaps`, one set per pyramid level,
and every per-RoI method reads each RoI from the level that fits its size (:mod:`.levels`).

RoIs are ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image coordinates.
"""
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ...layers import ps_roi_assemble, ps_roi_class_logits
from ..boxes import apply_deltas, clamp_boxes
from ..detections import Detections
from .inference import FCISTestParams, MaskLogits, fcis_inference_single_image
from .layout import (
    assemble_box_deltas,
    assemble_conv1x1,
    inside_outside_channel,
    inside_outside_class_logits,
    split_inside_outside,
)
from .levels import PyramidLevels

__all__ = ["FCISMaps", "FCISFeatureMaps", "FCISLevelMaps", "FCISReader", "CLASS_LOGITS_ROIS_PER_CHUNK", "TEST_CANDIDATES", "clip_finite"]

#: ``MODEL.FCIS.TEST_CANDIDATES`` values.
TEST_CANDIDATES = ("rois+regressed", "regressed", "rois")
#: RoIs per :meth:`FCISReader.roi_class_logits_chunked` chunk (BiSeg's class logits; FCIS's need
#: no chunks). The class logits need every class of every candidate, but assembling all 600 test
#: candidates at once makes each intermediate ``(P, 2, C+1, M, M)`` (686 MB for BiSeg at C = 80,
#: M = 42: coarse, fine, their sum, the prior, the product, the max...), so every op streams it
#: through main memory. 32 RoIs keep each intermediate at a few MB (9 MB for FCIS, 37 MB for BiSeg
#: at C = 80) that stays in cache from one op to the next, and are still enough RoIs per op to
#: amortise the per-call overhead and to keep the threads (or a GPU) busy.
CLASS_LOGITS_ROIS_PER_CHUNK = 32
#: detectron2's ``Box2BoxTransform`` default ``scale_clamp``: dw, dh at most log(1000 / 16).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass
class FCISMaps:
    """The per-image maps of a batch, computed once per forward (by the heads' ``score_maps``, or
    by an exported model's graph) and handed to every per-RoI method."""

    inside_outside: Tensor  # (N, k*k*2*(C+1), H, W)
    box: Tensor  # (N, k*k*4, H, W)


@dataclass
class FCISFeatureMaps:
    """:class:`FCISMaps` left as the 1x1 convs that make them: the ``conv_new`` features and the two
    map sets' weights. Every per-RoI read assembles the features and applies the weights per bin
    (:func:`.layout.assemble_conv1x1`), the same values as reading the maps; cheaper where few
    RoIs are read per image (training: the sampled RoIs), and the maps are never made."""

    features: Tensor  # (N, D, H, W)
    inside_outside_weight: Tensor  # (k*k*2*(C+1), D)
    inside_outside_bias: Tensor  # (k*k*2*(C+1),)
    box_weight: Tensor  # (k*k*4, D)
    box_bias: Tensor  # (k*k*4,)


@dataclass
class FCISLevelMaps:
    """:class:`FCISMaps` of each pyramid level, finest first (the reader's ``levels.strides``),
    made by the same layers from each level's features."""

    levels: List[FCISMaps]


#: What a reader's per-RoI methods read: one map set (or the convs that make it), or one per
#: pyramid level.
AnyFCISMaps = Union[FCISMaps, FCISFeatureMaps, FCISLevelMaps]


@dataclass(frozen=True)
class FCISReader:
    """FCIS's per-RoI reading of :class:`FCISMaps` with the heads' settings.

    Everything after :meth:`roi_inside_outside` / :meth:`roi_inside_outside_of_classes` takes ``M``
    from their output, so a subclass may assemble at another size; it must override both.
    """

    num_classes: int  # C
    group_size: int  # k
    mask_size: int  # M
    spatial_scale: float  # 1 / the stride of the maps
    sampling_ratio: int = 0
    aligned: bool = True
    test_candidates: str = "rois+regressed"  # one of TEST_CANDIDATES
    test_params: FCISTestParams = None  # default: FCISTestParams(num_classes)
    box_weights: Tuple[float, float, float, float] = (5.0, 5.0, 2.0, 2.0)  # MODEL.FCIS.BBOX_REG_WEIGHTS
    box_scale_clamp: float = DEFAULT_SCALE_CLAMP
    # maps on several pyramid levels (None: one map set at spatial_scale, the paper's); with
    # levels, spatial_scale is the finest level's
    levels: Optional[PyramidLevels] = None

    def __post_init__(self):
        if self.test_params is None:
            object.__setattr__(self, "test_params", FCISTestParams(num_classes=self.num_classes))
        object.__setattr__(self, "box_weights", tuple(float(w) for w in self.box_weights))
        if self.group_size > self.mask_size:
            raise ValueError(
                f"MODEL.FCIS.GROUP_SIZE (k = {self.group_size}) must be <= MODEL.FCIS.MASK_SIZE (M = {self.mask_size})"
            )
        if self.test_candidates not in TEST_CANDIDATES:
            raise ValueError(f"MODEL.FCIS.TEST_CANDIDATES = {self.test_candidates!r}; expected one of {TEST_CANDIDATES}")
        if self.test_params.num_classes != self.num_classes:
            raise ValueError(f"test_params.num_classes = {self.test_params.num_classes}, the reader has {self.num_classes}")
        if self.levels is not None and not math.isclose(self.spatial_scale, self.levels.spatial_scales[0]):
            raise ValueError(
                f"spatial_scale {self.spatial_scale} must be the finest level's, 1 / {self.levels.strides[0]}"
            )

    def replace(self, **changes) -> "FCISReader":
        """A copy with some settings changed (the reader is frozen)."""
        return replace(self, **changes)

    # ---- settings as JSON (deploy.json) ----------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The settings, JSON-serialisable; :meth:`from_dict` reads them back."""
        d = asdict(self)
        d["box_weights"] = list(self.box_weights)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FCISReader":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {unknown}; expected {sorted(known)}")
        d = dict(d)
        d["test_params"] = FCISTestParams(**d["test_params"])
        d["box_weights"] = tuple(float(w) for w in d["box_weights"])
        if d.get("levels") is not None:
            d["levels"] = PyramidLevels(**d["levels"])
        return cls(**d)

    def apply_box_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """``(R, 4)`` class-agnostic deltas applied to ``(R, 4)`` boxes (``BBOX_REG_WEIGHTS``):
        detectron2's ``Box2BoxTransform.apply_deltas``, bit-equal."""
        return apply_deltas(deltas, boxes, self.box_weights, self.box_scale_clamp)

    # ---- per pyramid level ---------------------------------------------------------------------------
    def read_by_level(
        self, maps: AnyFCISMaps, rois: Tensor, read: Callable[["FCISReader", FCISMaps, Tensor], Tensor]
    ) -> Tensor:
        """``read(level_reader, level_maps, rows)`` for the RoIs ``rois[rows]`` of each level, put
        back in the order of ``rois``: ``level_reader`` is this reader at that level's scale and
        without levels. Every RoI has exactly one level, so the result has one row per RoI."""
        if not isinstance(maps, FCISLevelMaps) or len(maps.levels) != len(self.levels.strides):
            got = f"{len(maps.levels)} levels" if isinstance(maps, FCISLevelMaps) else type(maps).__name__
            raise ValueError(f"a reader of the levels {self.levels.strides} reads FCISLevelMaps of as many levels, got {got}")
        assignment = self.levels.assign(rois[:, 1:])
        order, values = [], []
        for index, (level_maps, scale) in enumerate(zip(maps.levels, self.levels.spatial_scales)):
            rows = (assignment == index).nonzero().squeeze(1)
            values.append(read(replace(self, levels=None, spatial_scale=scale), level_maps, rows))
            order.append(rows)
        return torch.cat(values)[torch.argsort(torch.cat(order))]  # argsort: the inverse permutation

    # ---- per RoI ------------------------------------------------------------------------------------
    def roi_inside_outside(self, maps: FCISMaps, rois: Tensor) -> Tensor:
        """Assemble the inside/outside logits of each RoI.

        Args:
            maps: the batch's maps.
            rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image coordinates.

        Returns:
            ``(R, 2, C+1, M, M)``: ``[:, 0]`` inside logits, ``[:, 1]`` outside logits.
        """
        if self.levels is not None:
            return self.read_by_level(maps, rois, lambda reader, m, rows: reader.roi_inside_outside(m, rois[rows]))
        if isinstance(maps, FCISFeatureMaps):
            return split_inside_outside(
                assemble_conv1x1(
                    maps.features, maps.inside_outside_weight, maps.inside_outside_bias, rois, self.mask_size,
                    self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                )
            )
        return split_inside_outside(self._assemble_at_mask_size(maps.inside_outside, rois))

    def _assemble_at_mask_size(self, maps: Tensor, rois: Tensor) -> Tensor:
        """``(N, k*k*K, H, W)`` maps of FCIS's set -> ``(R, K, M, M)`` assembled per RoI."""
        return ps_roi_assemble(
            maps, rois.to(maps.dtype), self.mask_size, self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def roi_inside_outside_of_class(self, maps: FCISMaps, rois: Tensor, class_index: int) -> Tensor:
        """The inside/outside logits of one class of each RoI: ``roi_inside_outside(maps,
        rois)[:, :, class_index]`` (:meth:`roi_inside_outside_of_classes` with every RoI's class
        ``class_index``).

        Returns:
            ``(R, 2, M, M)``: ``[:, 0]`` inside logits, ``[:, 1]`` outside logits of class ``c``.
        """
        self._check_class_index(class_index)
        classes = torch.full((len(rois),), int(class_index), dtype=torch.int64, device=rois.device)
        return self.roi_inside_outside_of_classes(maps, rois, classes)

    def roi_inside_outside_of_classes(self, maps: FCISMaps, rois: Tensor, classes: Tensor) -> Tensor:
        """The inside/outside logits of each RoI for its own class, ``classes[r]``:
        ``roi_inside_outside(maps, rois)[r, :, classes[r]]``, assembling only those classes' maps
        (1/(C+1) of the work), every RoI in one call.

        Args:
            rois: ``(R, 5)``; classes: ``(R,)`` int64 in ``0 .. C``.

        Returns:
            ``(R, 2, M, M)``: ``[:, 0]`` inside logits, ``[:, 1]`` outside logits.
        """
        if self.levels is not None:
            return self.read_by_level(
                maps, rois, lambda reader, m, rows: reader.roi_inside_outside_of_classes(m, rois[rows], classes[rows])
            )
        if isinstance(maps, FCISFeatureMaps):  # every class, then each RoI's own
            return self.roi_inside_outside(maps, rois)[torch.arange(len(rois), device=rois.device), :, classes]
        return self._assemble_at_mask_size(
            self.maps_by_class(maps.inside_outside, self.group_size), self.rois_by_class(rois, classes)
        )

    def _check_class_index(self, class_index: int) -> None:
        if not 0 <= int(class_index) <= self.num_classes:
            raise ValueError(f"class_index must be in [0, {self.num_classes}] (C = background), got {class_index}")

    def maps_by_class(self, maps: Tensor, group_size: int) -> Tensor:
        """An inside/outside map set with its classes folded into the batch:
        ``(N, k*k*2*(C+1), H, W)`` -> ``(N*(C+1), 2*k*k, H, W)``, where image ``n``'s class ``c``
        is batch entry ``n*(C+1) + c``: its ``k*k`` inside cells then its ``k*k`` outside cells.

        In the layout of :mod:`.layout`, assembled output channel ``o`` reads the ``k*k``
        consecutive input channels ``o*k*k + gi*k + gj``, and the channels are ordered (inside /
        outside, class, cell): assembling 2 output channels from entry ``n*(C+1) + c`` gives
        ``(R, 2, M, M)``, inside then outside of class ``c``, as ``split_inside_outside(...)[:, :, c]``.
        Each RoI then reads its own class by its batch index (:meth:`rois_by_class`); the fold is
        one copy of the maps, shared by every RoI and class read in one call."""
        kk = group_size * group_size
        K = self.num_classes + 1
        expected = kk * 2 * K
        if maps.dim() != 4 or maps.shape[1] != expected:
            raise ValueError(
                f"expected inside/outside maps (N, k*k*2*(C+1) = {expected}, H, W) for k = {group_size}, "
                f"C = {self.num_classes}, got {tuple(maps.shape)}"
            )
        N, _, H, W = maps.shape
        return maps.view(N, 2, K, kk, H, W).transpose(1, 2).reshape(N * K, 2 * kk, H, W)

    def rois_by_class(self, rois: Tensor, classes: Tensor) -> Tensor:
        """``(R, 5)`` RoIs whose batch index ``n`` becomes ``n*(C+1) + classes[r]``, the entry of
        :meth:`maps_by_class` holding their image's maps of that class."""
        if classes.shape != rois.shape[:1]:
            raise ValueError(f"classes must be (R,) = ({len(rois)},), got {tuple(classes.shape)}")
        batch = rois[:, :1] * (self.num_classes + 1) + classes[:, None].to(rois.dtype)
        return torch.cat([batch, rois[:, 1:]], dim=1)

    def roi_class_logits(self, maps: FCISMaps, rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, C+1)`` class logits,
        ``inside_outside_class_logits(roi_inside_outside(maps, rois))``.

        FCIS's own reading is read out by the native :func:`~instfcn_d2.layers.ps_roi_class_logits`,
        which never materialises the assembled ``(R, 2, C+1, M, M)`` logits (the same values to
        float rounding). A reader whose inside/outside logits are not FCIS's assembly (it overrides
        :meth:`roi_inside_outside`, as BiSeg's does), or maps that need a gradient, take
        :meth:`roi_class_logits_chunked`, the reference."""
        if self.levels is not None:
            return self.read_by_level(maps, rois, lambda reader, m, rows: reader.roi_class_logits(m, rois[rows]))
        if not self._reads_class_logits_natively(maps):
            return self.roi_class_logits_chunked(maps, rois)
        io = maps.inside_outside
        return ps_roi_class_logits(
            io,
            rois.to(io.dtype),
            self.mask_size,
            self.group_size,
            self.num_classes,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def _reads_class_logits_natively(self, maps: FCISMaps) -> bool:
        """Whether :meth:`roi_class_logits` may use the native read-out: the inside/outside logits
        are FCIS's (neither :meth:`roi_inside_outside` nor the assembly it calls is overridden)
        and no gradient is needed (the op has none)."""
        cls = type(self)
        return (
            isinstance(maps, FCISMaps)
            and cls.roi_inside_outside is FCISReader.roi_inside_outside
            and cls._assemble_at_mask_size is FCISReader._assemble_at_mask_size
            and not (torch.is_grad_enabled() and maps.inside_outside.requires_grad)
        )

    def roi_class_logits_chunked(self, maps: FCISMaps, rois: Tensor) -> Tensor:
        """:meth:`roi_class_logits` through :meth:`roi_inside_outside`, over chunks of
        :data:`CLASS_LOGITS_ROIS_PER_CHUNK` RoIs (the same values as the unchunked
        ``inside_outside_class_logits(roi_inside_outside(maps, rois))``, without the whole
        ``(R, 2, C+1, M, M)`` intermediate): any reader's, differentiable."""
        if torch.compiler.is_exporting():
            # a count the data decides cannot set the number of chunks of a graph: one chunk
            # (the memory of all candidates at once, see CLASS_LOGITS_ROIS_PER_CHUNK)
            chunks = [rois]
        else:
            # an empty rois still makes one call: (0, C+1) logits, with C from the maps
            chunks = rois.split(CLASS_LOGITS_ROIS_PER_CHUNK) if len(rois) else [rois]
        logits = [inside_outside_class_logits(self.roi_inside_outside(maps, chunk)) for chunk in chunks]
        return torch.cat(logits, dim=0)

    def roi_box_deltas(self, maps: FCISMaps, rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, 4)`` class-agnostic box deltas (:meth:`apply_box_deltas` space)."""
        if self.levels is not None:
            return self.read_by_level(maps, rois, lambda reader, m, rows: reader.roi_box_deltas(m, rois[rows]))
        if isinstance(maps, FCISFeatureMaps):
            k = self.group_size
            cells = assemble_conv1x1(
                maps.features, maps.box_weight, maps.box_bias, rois, k, k, self.spatial_scale, self.sampling_ratio,
                self.aligned,
            )
            return cells.mean(dim=(2, 3))
        return assemble_box_deltas(maps.box, rois, self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    # ---- test time --------------------------------------------------------------------------------------
    def candidates(
        self, maps: FCISMaps, rois: Tensor, rois_per_image: Sequence[int], image_sizes: Sequence[Tuple[int, int]]
    ) -> Tensor:
        """``(P, 5)`` RoIs scored at test time (``test_candidates``): the RoIs and / or their
        box-regressed versions clipped to their image.

        Args:
            rois: ``(R, 5)`` the RPN's RoIs, grouped by image in batch order.
            rois_per_image: how many of them each image has.
            image_sizes: ``(H, W)`` of each network input.
        """
        candidates = []
        if self.test_candidates in ("rois+regressed", "rois"):
            candidates.append(rois)
        if self.test_candidates in ("rois+regressed", "regressed"):
            deltas = self.roi_box_deltas(maps, rois)
            regressed = self.apply_box_deltas(deltas, rois[:, 1:])
            if len(image_sizes) == 1:  # (no split by a count: an exported graph has none)
                clipped = clip_finite(regressed, image_sizes[0])
            else:
                parts = regressed.split(list(rois_per_image))
                clipped = torch.cat([clip_finite(b, size) for b, size in zip(parts, image_sizes)], dim=0)
            candidates.append(torch.cat([rois[:, :1], clipped], dim=1))
        return torch.cat(candidates, dim=0)

    def mask_logits_reader(self, maps: FCISMaps, rois: Tensor) -> MaskLogits:
        """:data:`.inference.MaskLogits` of ``rois`` (``(P, 5)``, one image's candidates),
        assembled on demand with :meth:`roi_inside_outside_of_classes`."""

        def mask_logits(indices: Tensor, classes: Tensor) -> Tensor:
            return self.roi_inside_outside_of_classes(maps, rois[indices], classes)

        return mask_logits

    @torch.no_grad()
    def detect(
        self,
        maps: FCISMaps,
        rois: Tensor,
        rois_per_image: Sequence[int],
        image_sizes: Sequence[Tuple[int, int]],
        class_logits: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> List[Detections]:
        """Detections per image (at the network input resolution) from the RPN's RoIs
        (arguments as :meth:`candidates`). ``class_logits``: ``(P, 5)`` candidates -> ``(P, C+1)``
        logits from elsewhere than the maps (default: :meth:`roi_class_logits`)."""
        candidates = self.candidates(maps, rois, rois_per_image, image_sizes)
        # the class scores of every candidate, chunked; the masks later, per (candidate, class) used
        logits = self.roi_class_logits(maps, candidates) if class_logits is None else class_logits(candidates)
        scores = torch.softmax(logits, dim=1)
        results = []
        for i, image_size in enumerate(image_sizes):
            image_rois, image_scores = candidates, scores
            if len(image_sizes) > 1:  # one image needs no selection (nor an exported graph one)
                rows = (candidates[:, 0] == i).nonzero().squeeze(1)
                image_rois, image_scores = candidates[rows], scores[rows]
            mask_logits = self.mask_logits_reader(maps, image_rois)
            results.append(
                fcis_inference_single_image(image_rois[:, 1:], image_scores, mask_logits, image_size, self.test_params)
            )
        return results


def clip_finite(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """detectron2's ``Boxes.clip`` of the finite rows of ``(R, 4)`` boxes; rows with NaN / inf
    (from diverged weights; inference drops them) are left as they are, which the clip would refuse."""
    finite = torch.isfinite(boxes).all(dim=1)
    return torch.where(finite[:, None], clamp_boxes(boxes, image_size), boxes)
