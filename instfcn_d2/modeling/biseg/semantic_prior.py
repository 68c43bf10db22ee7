"""BiSeg's semantic-segmentation branch (Pham, Ito, Kozakaya, BMVC 2017, section 3): an FCN head
whose softmax is the semantic prior P(c | X). How the prior is cropped per RoI and combined with
the position-sensitive likelihoods is in :mod:`instfcn_d2.core.biseg.prior`."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import init_new_layers

__all__ = ["SemanticBranch"]


class SemanticBranch(nn.Module):
    """BiSeg's semantic-segmentation sub-network: an FCN head on the conv5 feature.

    3x3 conv ``conv_dim`` + ReLU, 1x1 conv -> ``C+1`` score maps; with ``conv_dim = 0`` only the
    1x1 conv (FCN's score layer on the trunk's last map). The paper keeps this branch "as simple
    as possible" (no CRF, no extra context) so that the gain it reports comes from the Bayesian
    combination, not from a strong segmenter; so does this class. The 3x3 conv on a 2048-d conv5
    at stride 16 costs about a fifth of an R50 FCIS at 600 px, hence the option.

    ``forward``: ``(N, Cin, H, W) -> (N, C+1, H, W)`` logits at the feature's resolution.
    """

    def __init__(self, in_channels: int, num_classes: int, *, conv_dim: int = 512):
        """
        Args:
            in_channels: channels of the conv5 feature.
            num_classes: ``C``, object classes; the branch predicts ``C+1`` (background last).
            conv_dim: channels of the 3x3 conv; 0: no 3x3 conv, the 1x1 predictor reads the feature.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SemanticBranch: num_classes must be >= 1, got {num_classes}")
        if conv_dim < 0:
            raise ValueError(f"SemanticBranch: conv_dim must be >= 0 (0: no 3x3 conv), got {conv_dim}")
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_channels, conv_dim, kernel_size=3, padding=1) if conv_dim else None
        self.predictor = nn.Conv2d(conv_dim or in_channels, num_classes + 1, kernel_size=1)
        # as detectron2's SemSegFPNHead: MSRA init for the conv; a small predictor starts every
        # pixel near the uniform distribution, so the prior does not favour a class at step 0
        if self.conv is not None:
            init_new_layers(self.conv, "msra")
        init_new_layers(self.predictor)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4:
            raise ValueError(f"SemanticBranch: features must be (N, Cin, H, W), got {tuple(features.shape)}")
        if self.conv is not None:
            features = F.relu(self.conv(features))
        return self.predictor(features)

    @staticmethod
    def probabilities(logits: Tensor) -> Tensor:
        """``(N, C+1, H, W)`` logits -> per-pixel class probabilities (softmax over dim 1), the
        paper's ``P(c | X)``."""
        return F.softmax(logits, dim=1)

    def losses(self, logits: Tensor, targets: Tensor, ignore_value: int = 255) -> Tensor:
        """Per-pixel multinomial cross-entropy (the paper's ``L_ss``), mean over non-ignored pixels.

        As detectron2's ``SemSegFPNHead.losses``: the logits are upsampled (bilinear,
        ``align_corners=False``) to the targets' resolution, then ``cross_entropy`` with
        ``ignore_index``. The targets are the padded batch (``ImageList.from_tensors(...,
        pad_value=ignore_value)``), so the padding contributes nothing.

        Args:
            logits: ``(N, C+1, H, W)``.
            targets: ``(N, H_img, W_img)`` int64 labels in ``[0, C]`` (0 = background, ``c + 1`` =
                thing class ``c``) or ``ignore_value``.
            ignore_value: label of pixels without a target (detectron2's
                ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).

        Returns:
            scalar loss; 0 (still connected to the branch, for DDP) when every pixel is ignored.
        """
        if targets.dim() != 3 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"SemanticBranch.losses: targets must be (N, H_img, W_img) with N = {logits.shape[0]} "
                f"(logits {tuple(logits.shape)}), got {tuple(targets.shape)}"
            )
        if targets.dtype != torch.int64:
            raise TypeError(f"SemanticBranch.losses: targets must be int64 class labels, got {targets.dtype}")
        num_labels = logits.shape[1]
        bad = (targets != ignore_value) & ((targets < 0) | (targets >= num_labels))
        if bad.any():
            values = torch.unique(targets[bad]).tolist()[:10]
            raise ValueError(
                f"SemanticBranch.losses: sem_seg labels {values} are outside [0, {num_labels - 1}] "
                f"(0 = background, c + 1 = thing class c, for C = {num_labels - 1} classes) and are not the "
                f"ignore value {ignore_value} (MODEL.SEM_SEG_HEAD.IGNORE_VALUE)"
            )
        logits = logits.float()  # the upsampling and the loss in float32, as detectron2's SemSegFPNHead
        # size= rather than detectron2's scale_factor=stride: the same when the padded image is a
        # multiple of the stride, and still correct when it is not (dilated trunks round up)
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        # sum / number of labelled pixels = cross_entropy's "mean" with ignore_index, except that an
        # image batch with no labelled pixel gives 0 instead of 0/0 = NaN
        loss = F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore_value)
        return loss / (targets != ignore_value).sum().clamp(min=1)
