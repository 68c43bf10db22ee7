"""InstanceFCN's two branches and the ~DeepMask mask head of the paper's Table 2.

Every mask head has the same two-step interface, so the meta-architecture does not care which
one it runs:

- ``forward(features (N, C, H, W)) -> maps``: the per-image maps (computed once per image);
- ``assemble(maps, positions (P, 3)) -> (P, M, M)`` mask logits of the windows whose top-left
  feature pixel is ``(y, x)`` in image ``batch_index`` (rows ``(batch_index, y, x)``; windows may
  hang off the map, outside pixels read 0). ``mask_size`` is ``M``.

Heads are built by name (``MODEL.INSTANCE_FCN.MASK_HEAD``) from
:data:`INSTANCE_FCN_MASK_HEAD_REGISTRY`: ``"InstanceSensitive"`` (InstanceFCN) or ``"DeepMask"``;
a project can register its own builder ``fn(cfg, input_shape) -> head``.
"""
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torchvision.ops import roi_align

from ...layers import window_assemble
from ..common import init_new_layers

__all__ = [
    "INSTANCE_FCN_MASK_HEAD_REGISTRY",
    "InstanceSensitiveMaskHead",
    "DeepMaskHead",
    "ObjectnessHead",
    "DeepMaskObjectnessHead",
    "DEEPMASK_SCORE_BRANCHES",
    "build_instance_fcn_mask_head",
    "build_objectness_head",
    "map_pooled_windows",
]

INSTANCE_FCN_MASK_HEAD_REGISTRY = Registry("INSTANCE_FCN_MASK_HEAD")
INSTANCE_FCN_MASK_HEAD_REGISTRY.__doc__ = "Mask heads of InstanceFCN: maps + per-window assembling."


class InstanceSensitiveMaskHead(nn.Module):
    """1x1 conv ``conv_dim`` + ReLU, 3x3 conv -> ``k*k`` instance-sensitive score maps; windows
    are assembled from them by copying (:func:`instfcn_d2.layers.window_assemble`).

    ``forward``: ``(N, C, H, W) -> (N, k*k, H, W)``; ``assemble``: ``-> (P, m, m)`` logits.
    """

    def __init__(self, in_channels: int, *, conv_dim: int = 512, group_size: int = 5, window_size: int = 21):
        super().__init__()
        if group_size > window_size:
            raise ValueError(
                f"MODEL.INSTANCE_FCN.GROUP_SIZE (k = {group_size}) must be <= WINDOW_SIZE (m = {window_size})"
            )
        self.group_size = group_size
        self.window_size = window_size
        self.mask_size = window_size
        self.reduce = nn.Conv2d(in_channels, conv_dim, kernel_size=1)
        self.mask_layer = nn.Conv2d(conv_dim, group_size * group_size, kernel_size=3, padding=1)
        init_new_layers(self)  # the paper: N(0, 0.01)

    def forward(self, features: Tensor) -> Tensor:
        return self.mask_layer(F.relu(self.reduce(features)))

    def assemble(self, maps: Tensor, positions: Tensor) -> Tensor:
        return window_assemble(maps, self.window_size, self.group_size, positions)


class DeepMaskHead(nn.Module):
    """The paper's "~DeepMask" baseline: 1x1 conv ``conv_dim`` + ReLU on the trunk, each window's
    ``m x m`` features pooled to ``R x R`` (RoIAlign; 14 x 14 as DeepMask's 224-px crop at stride
    16), fc ``fc_dim``, fc ``M*M`` mask logits (M = 56): DeepMask's low-rank linear pair, with a
    ReLU between the two only if ``fc_relu``.

    ``forward``: ``(N, C, H, W) -> (N, conv_dim, H, W)``; ``assemble``: ``-> (P, M, M)`` logits.
    With the paper's sizes (512 channels, R = 14, fc 512, M = 56) the two fc layers hold
    512*14*14*512 + 512*56^2 ~= 53M weights.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        conv_dim: int = 512,
        window_size: int = 21,
        pooler_resolution: int = 14,
        fc_dim: int = 512,
        mask_size: int = 56,
        fc_relu: bool = False,
        chunk_size: int = 256,
    ):
        super().__init__()
        self.window_size = window_size
        self.pooler_resolution = pooler_resolution
        self.mask_size = mask_size
        self.fc_relu = fc_relu
        self.chunk_size = chunk_size  # windows per fc pass: bounds memory at inference
        self.reduce = nn.Conv2d(in_channels, conv_dim, kernel_size=1)
        init_new_layers(self.reduce)
        self.fc = nn.Linear(conv_dim * pooler_resolution * pooler_resolution, fc_dim)
        self.mask_fc = nn.Linear(fc_dim, mask_size * mask_size)
        for layer in (self.fc, self.mask_fc):
            # xavier as detectron2's fc heads: N(0, 0.01) on a ~100k-input fc starts far too large
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def mask_layers(self) -> nn.ModuleList:
        """The layers that produce the mask from the window's features (the 53M of the paper)."""
        return nn.ModuleList([self.fc, self.mask_fc])

    def forward(self, features: Tensor) -> Tensor:
        return F.relu(self.reduce(features))

    def assemble(self, maps: Tensor, positions: Tensor) -> Tensor:
        P = positions.shape[0]
        if P == 0:
            return maps.new_zeros((0, self.mask_size, self.mask_size))

        def mask_logits(pooled: Tensor) -> Tensor:
            hidden = self.fc(pooled.flatten(1))
            if self.fc_relu:
                hidden = F.relu(hidden)
            return self.mask_fc(hidden)

        out = map_pooled_windows(maps, positions, self.window_size, self.pooler_resolution, self.chunk_size, mask_logits)
        return out.view(P, self.mask_size, self.mask_size)


def map_pooled_windows(maps: Tensor, positions: Tensor, window_size: int, resolution: int, chunk_size: int, fn) -> Tensor:
    """``fn`` of the ``(P', C, R, R)`` RoIAligned features of windows, chunk by chunk of
    ``chunk_size`` windows (one chunk while exporting or tracing: a graph cannot hold a number of
    chunks that the image size decides), concatenated.

    Args:
        maps: ``(N, C, H, W)``.
        positions: ``(P, 3)`` rows ``(batch_index, y, x)``, the windows' top-left feature pixels;
            windows may hang off the map (those parts read 0, as ``window_assemble``'s).
    """
    m = window_size
    # zero padding by m makes the off-map parts of hanging windows read 0, as window_assemble
    padded = F.pad(maps, (m, m, m, m))
    pos = positions.to(maps.dtype)
    x0 = pos[:, 2] + m
    y0 = pos[:, 1] + m
    rois = torch.stack([pos[:, 0], x0, y0, x0 + m, y0 + m], dim=1)
    chunks = [rois] if torch.compiler.is_exporting() or torch.jit.is_tracing() else rois.split(chunk_size)
    return torch.cat([fn(roi_align(padded, chunk, resolution, 1.0, 0, aligned=True)) for chunk in chunks])


class ObjectnessHead(nn.Module):
    """3x3 conv ``conv_dim`` + ReLU, 1x1 conv -> 1 logit per position: ``(N, C, H, W) -> (N, H, W)``.

    The logit at ``(y, x)`` scores the window centred there (see :mod:`.window_labels`).
    """

    def __init__(self, in_channels: int, *, conv_dim: int = 512):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_dim, kernel_size=3, padding=1)
        self.logits = nn.Conv2d(conv_dim, 1, kernel_size=1)
        init_new_layers(self)  # the paper: N(0, 0.01)

    def forward(self, features: Tensor) -> Tensor:
        return self.logits(F.relu(self.conv(features)))[:, 0]

    def score_windows(self, features: Tensor, centres: Tensor) -> Tensor:
        """``(P, 3)`` rows ``(batch_index, y, x)`` of window centres -> their ``(P,)`` logits (read
        from the dense map: a convolution scores every window at once)."""
        dense = self(features)
        return dense[centres[:, 0], centres[:, 1], centres[:, 2]]


class DeepMaskObjectnessHead(nn.Module):
    """~DeepMask's objectness branch, "constructed as in DeepMask" (InstanceFCN, Sec. 4; DeepMask,
    Pinheiro et al. 2015, Sec. 3.1): 1x1 conv ``conv_dim`` + ReLU on the trunk, each window's
    ``m x m`` features RoIAligned to ``R x R`` (as :class:`DeepMaskHead`'s), 2x2 max pooling, fc
    ``fc_dims[0]`` + ReLU + dropout, fc ``fc_dims[1]`` + ReLU + dropout, fc 1.

    ``forward``: ``(N, C, H, W) -> (N, H, W)``, the logit of the window centred at every position
    (every window pooled and scored: inference); :meth:`score_windows` scores listed windows only
    (training's sampled ones).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        conv_dim: int = 512,
        window_size: int = 21,
        pooler_resolution: int = 14,
        fc_dims=(512, 1024),
        dropout: float = 0.5,
        chunk_size: int = 256,
    ):
        super().__init__()
        if pooler_resolution % 2:
            raise ValueError(f"MODEL.INSTANCE_FCN.DEEPMASK.POOLER_RESOLUTION must be even (2x2 max pooling), got {pooler_resolution}")
        self.window_size = window_size
        self.pooler_resolution = pooler_resolution
        self.chunk_size = chunk_size
        self.reduce = nn.Conv2d(in_channels, conv_dim, kernel_size=1)
        init_new_layers(self.reduce)
        dims = [conv_dim * (pooler_resolution // 2) ** 2, *fc_dims]
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.fc = nn.Sequential(*layers, nn.Linear(dims[-1], 1))
        for layer in self.fc:
            if isinstance(layer, nn.Linear):  # as DeepMaskHead's fc layers
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def score_windows(self, features: Tensor, centres: Tensor) -> Tensor:
        """``(N, C, H, W)`` features, ``(P, 3)`` rows ``(batch_index, y, x)`` of window centres ->
        ``(P,)`` logits."""
        if centres.shape[0] == 0:
            return features.new_zeros((0,))
        m = self.window_size
        top_left = torch.cat([centres[:, :1], centres[:, 1:] - m // 2], dim=1)

        def logits(pooled: Tensor) -> Tensor:
            return self.fc(F.max_pool2d(pooled, 2).flatten(1))[:, 0]

        return map_pooled_windows(F.relu(self.reduce(features)), top_left, m, self.pooler_resolution, self.chunk_size, logits)

    def forward(self, features: Tensor) -> Tensor:
        N, _, H, W = features.shape
        n, y, x = torch.meshgrid(
            *(torch.arange(s, device=features.device) for s in (N, H, W)), indexing="ij"
        )
        centres = torch.stack([n.flatten(), y.flatten(), x.flatten()], dim=1)
        return self.score_windows(features, centres).view(N, H, W)


# Registered builders: the function name is the value of MODEL.INSTANCE_FCN.MASK_HEAD.
@INSTANCE_FCN_MASK_HEAD_REGISTRY.register()
def InstanceSensitive(cfg, input_shape: ShapeSpec) -> InstanceSensitiveMaskHead:
    c = cfg.MODEL.INSTANCE_FCN
    return InstanceSensitiveMaskHead(
        input_shape.channels, conv_dim=c.MASK_BRANCH_DIM, group_size=c.GROUP_SIZE, window_size=c.WINDOW_SIZE
    )


@INSTANCE_FCN_MASK_HEAD_REGISTRY.register()
def DeepMask(cfg, input_shape: ShapeSpec) -> DeepMaskHead:
    c = cfg.MODEL.INSTANCE_FCN
    return DeepMaskHead(
        input_shape.channels,
        conv_dim=c.MASK_BRANCH_DIM,
        window_size=c.WINDOW_SIZE,
        pooler_resolution=c.DEEPMASK.POOLER_RESOLUTION,
        fc_dim=c.DEEPMASK.FC_DIM,
        mask_size=c.DEEPMASK.MASK_SIZE,
        fc_relu=c.DEEPMASK.FC_RELU,
    )


#: ``MODEL.INSTANCE_FCN.DEEPMASK.SCORE_BRANCH`` values.
DEEPMASK_SCORE_BRANCHES = ("DeepMask", "InstanceFCN")


def build_objectness_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """InstanceFCN's objectness branch (:class:`ObjectnessHead`), or with the ~DeepMask mask head
    and ``DEEPMASK.SCORE_BRANCH "DeepMask"`` DeepMask's (:class:`DeepMaskObjectnessHead`)."""
    c = cfg.MODEL.INSTANCE_FCN
    branch = c.DEEPMASK.SCORE_BRANCH
    if branch not in DEEPMASK_SCORE_BRANCHES:
        raise ValueError(f"MODEL.INSTANCE_FCN.DEEPMASK.SCORE_BRANCH = {branch!r}; expected one of {DEEPMASK_SCORE_BRANCHES}")
    if c.MASK_HEAD == "DeepMask" and branch == "DeepMask":
        return DeepMaskObjectnessHead(
            input_shape.channels,
            conv_dim=c.MASK_BRANCH_DIM,
            window_size=c.WINDOW_SIZE,
            pooler_resolution=c.DEEPMASK.POOLER_RESOLUTION,
            fc_dims=tuple(c.DEEPMASK.SCORE_FC_DIMS),
            dropout=c.DEEPMASK.SCORE_DROPOUT,
        )
    return ObjectnessHead(input_shape.channels, conv_dim=c.OBJECTNESS_DIM)


def build_instance_fcn_mask_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The mask head named by ``cfg.MODEL.INSTANCE_FCN.MASK_HEAD`` (``"InstanceSensitive"`` | ``"DeepMask"``)."""
    name = cfg.MODEL.INSTANCE_FCN.MASK_HEAD
    if name not in INSTANCE_FCN_MASK_HEAD_REGISTRY:
        known = sorted(k for k, _ in INSTANCE_FCN_MASK_HEAD_REGISTRY)
        raise ValueError(f"MODEL.INSTANCE_FCN.MASK_HEAD = {name!r} is unknown; expected one of {known}")
    return INSTANCE_FCN_MASK_HEAD_REGISTRY.get(name)(cfg, input_shape)
