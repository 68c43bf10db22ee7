"""BiSeg's semantic prior (Pham, Ito, Kozakaya, BMVC 2017, section 3) and its PS-map fusion, per
RoI: the parameter-free pieces, used by BiSeg's reader (:mod:`.reading`). The branch that makes
the semantic logits is ``instfcn_d2.modeling.biseg.semantic_prior.SemanticBranch``::

    conv5 feature --SemanticBranch--> S logits (N, C+1, H, W) --softmax--> P(c | X)
    P(c | X) --crop_roi_prior--> per-RoI prior (R, C+1, M, M)
    k1 maps (stride 16) -> assembled (R, 2(C+1), M/2, M/2) --+
    k2 maps (stride 8)  -> assembled (R, 2(C+1), M,   M)   --+--fuse_likelihoods--> L (R, 2(C+1), M, M)
    L inside, L outside, prior --combine_prior--> inside', outside  (then FCIS's softmax / max / mean)

``C`` is the number of object classes. :func:`crop_roi_prior` and :func:`combine_prior` need the
prior in the class order of the likelihoods (FCIS's: classes ``0 .. C-1``, background ``C``), so
that class ``c`` of the prior multiplies class ``c`` of the likelihoods. The semantic branch is
trained on the datasets' semantic labels (background 0, class ``c`` at ``c + 1``); BiSeg moves the
background channel last before the crop (:func:`.reading.labels_to_fcis_order`).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...layers import ps_roi_assemble

__all__ = ["crop_roi_prior", "combine_prior", "fuse_likelihoods", "PRIOR_MODES"]

#: The forms of :func:`combine_prior` ("product": the paper's; "log": Bayes in log space).
PRIOR_MODES = ("product", "log")


def crop_roi_prior(
    sem_probs: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = -1,
) -> Tensor:
    """Crop each RoI from the semantic probability maps: the paper's "ROI semantic segmentation
    probability maps", at the resolution of the likelihood maps.

    This is ``torchvision.ops.roi_align(aligned=True)``: bilinear samples averaged per bin. Being
    a convex combination of probability vectors, each output pixel is again a distribution over
    the ``C+1`` classes. It runs as the native position-sensitive assembling with ``k = 1`` (the
    same sampling, tested against roi_align): torchvision's CPU roi_align backward is serial and
    was the most expensive op of a BiSeg training step at ``M = 42`` (116 ms of 720).

    Args:
        sem_probs: ``(N, C+1, H, W)`` softmax output of :class:`SemanticBranch`.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
        output_size: ``M``.
        spatial_scale: ``1 / stride`` of ``sem_probs`` (1/16 on BiSeg's conv5).
        sampling_ratio: samples per bin side; ``<= 0``: ``ceil(roi_size / M)``, at most 64.

    Returns:
        ``(R, C+1, M, M)``.
    """
    if sem_probs.dim() != 4:
        raise ValueError(f"crop_roi_prior: sem_probs must be (N, C+1, H, W), got {tuple(sem_probs.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"crop_roi_prior: rois must be (R, 5) = (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}"
        )
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"crop_roi_prior: output_size must be an int >= 1, got {output_size!r}")
    return ps_roi_assemble(
        sem_probs,
        rois.to(sem_probs.dtype),
        output_size,
        1,
        spatial_scale=float(spatial_scale),
        sampling_ratio=int(sampling_ratio),
        aligned=True,
    )


def combine_prior(
    inside: Tensor, outside: Tensor, prior: Tensor, mode: str = "product", eps: float = 1e-6
) -> Tuple[Tensor, Tensor]:
    """BiSeg's Bayesian inference: the RoI prior ``P(c | X)`` enters the inside likelihoods of
    class ``c``; the outside maps are returned unchanged ("there are no priors to predict
    outside probabilities").

    ``mode="product"`` (the paper's equation, kept exactly): ``inside' = inside * prior``.
    The paper's "likelihood maps" are FCIS's raw assembled scores, which the next step feeds to
    ``softmax(inside, outside)`` and ``max(inside, outside)``, i.e. they are logits, not
    probabilities. Multiplying a logit by ``p in [0, 1]`` shrinks it towards 0, not towards
    "outside": a low prior pulls a *positive* inside score down (as intended) but pulls a
    *negative* one up, raising the foreground probability where the prior says "not class c";
    and with ``p -> 0`` the pixel ends at ``softmax(0, outside)``, not at "background".
    The network can learn around this (it is trained end to end with the product), which is how
    the paper uses it.

    ``mode="log"`` (Bayes in log space, the option): ``inside' = inside + log(prior + eps)``.
    Reading ``exp(inside)`` as the unnormalised likelihood ``P(I | c, X)``, the posterior
    ``P(I, c | X) = P(I | c, X) P(c | X)`` (the paper's Eq. 2) is ``exp(inside) * prior``, whose
    logit is ``inside + log(prior)``. Then ``softmax(inside', outside)`` is the foreground
    posterior and a low prior always lowers it, whatever the sign of ``inside``; the gradient
    into the semantic logits is that of a log-softmax (bounded). ``eps`` keeps ``log(0)`` finite
    (``log(1e-6) = -13.8``).

    Measured only at toy scale (the overfit setting of ``tests/modeling/test_biseg.py``, fused
    maps, 3 seeds, 120 SGD steps on 3 images): "product" learns the masks more slowly (mask loss
    after 40 steps 0.33 vs 0.22 for "log"; an untrained prior of ~1/(C+1) scales the inside
    logits and their gradients down) and ends with a lower mask IoU (0.79 vs 0.87; "none" 0.90),
    while both classify every object. Not a statement about the paper's VOC AP.

    Args:
        inside: ``(R, C+1, M, M)`` inside likelihoods (logits).
        outside: ``(R, C+1, M, M)`` outside likelihoods (logits).
        prior: ``(R, C+1, M, M)`` RoI semantic probabilities (:func:`crop_roi_prior`).
        mode: ``"product"`` or ``"log"``.
        eps: added to the prior before the log (``"log"`` only).

    Returns:
        ``(inside', outside)``, both ``(R, C+1, M, M)``.
    """
    if not (inside.shape == outside.shape == prior.shape) or inside.dim() != 4:
        raise ValueError(
            "combine_prior: inside, outside and prior must all be (R, C+1, M, M) of one shape, got "
            f"{tuple(inside.shape)}, {tuple(outside.shape)}, {tuple(prior.shape)}"
        )
    if mode == "product":
        return inside * prior, outside
    if mode == "log":
        return inside + torch.log(prior + eps), outside
    raise ValueError(f"combine_prior: mode must be one of {PRIOR_MODES} (MODEL.BISEG.PRIOR_MODE), got {mode!r}")


def fuse_likelihoods(coarse: Tensor, fine: Tensor) -> Tensor:
    """BiSeg's fusion of two PS map sets (the paper's Fig. 4, FCN's skip architecture): the RoI
    likelihoods assembled on the stride-16 set (``k1`` cells) at ``M/2`` are upsampled x2
    (bilinear, ``align_corners=False``: bin centres of both grids stay aligned on the same RoI)
    and summed with those assembled on the stride-8 set (``k2`` cells) at ``M``.

    Args:
        coarse: ``(R, 2*(C+1), M/2, M/2)`` from the stride-16 maps.
        fine: ``(R, 2*(C+1), M, M)`` from the stride-8 maps.

    Returns:
        ``(R, 2*(C+1), M, M)``.
    """
    if coarse.dim() != 4 or fine.dim() != 4:
        raise ValueError(
            f"fuse_likelihoods: coarse and fine must be 4-D (R, 2*(C+1), m, m), got "
            f"{tuple(coarse.shape)} and {tuple(fine.shape)}"
        )
    m = fine.shape[-1]
    if fine.shape[-2] != m or m % 2:
        raise ValueError(
            f"fuse_likelihoods: the fine likelihoods must be square with an even side M (the coarse ones "
            f"are M/2 and upsampled x2; MODEL.BISEG.MASK_SIZE), got {tuple(fine.shape[-2:])}"
        )
    expected = (fine.shape[0], fine.shape[1], m // 2, m // 2)
    if tuple(coarse.shape) != expected:
        raise ValueError(
            f"fuse_likelihoods: coarse must be (R, K, M/2, M/2) = {expected} to match fine {tuple(fine.shape)}, "
            f"got {tuple(coarse.shape)}"
        )
    return F.interpolate(coarse, size=(m, m), mode="bilinear", align_corners=False) + fine
