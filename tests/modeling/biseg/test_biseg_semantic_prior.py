"""BiSeg's semantic prior pieces: the semantic branch and its loss, the RoI crop of the prior,
the Bayesian combination (product and log forms) and the fusion of the two PS map sets."""
import math

import pytest
import torch
import torch.nn.functional as F

from instfcn_d2.core.biseg.prior import combine_prior, crop_roi_prior, fuse_likelihoods
from instfcn_d2.modeling.biseg.semantic_prior import SemanticBranch


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- SemanticBranch ------------------------------------------------------------------------------------
def test_branch_shapes_and_probabilities():
    torch.manual_seed(0)
    branch = SemanticBranch(16, num_classes=3, conv_dim=8)
    logits = branch(torch.randn(2, 16, 5, 7))
    assert logits.shape == (2, 4, 5, 7)
    probs = branch.probabilities(logits)
    assert torch.allclose(probs.sum(1), torch.ones(2, 5, 7), atol=1e-6)
    assert torch.allclose(probs, F.softmax(logits, 1))
    # a fresh branch starts near the uniform prior (small predictor init)
    assert (probs - 0.25).abs().max() < 0.1


def test_branch_without_3x3_conv_is_a_1x1_score_layer():
    torch.manual_seed(3)
    branch = SemanticBranch(6, num_classes=2, conv_dim=0)
    assert branch.conv is None and branch.predictor.in_channels == 6
    x = torch.randn(1, 6, 4, 5)
    expected = torch.einsum("oc,nchw->nohw", branch.predictor.weight[:, :, 0, 0], x) + branch.predictor.bias[:, None, None]
    torch.testing.assert_close(branch(x), expected)
    with pytest.raises(ValueError, match="conv_dim must be >= 0"):
        SemanticBranch(6, num_classes=2, conv_dim=-1)


def test_loss_is_detectron2s_upsampled_cross_entropy_over_labelled_pixels():
    torch.manual_seed(1)
    branch = SemanticBranch(4, num_classes=2, conv_dim=4)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    targets = torch.randint(0, 3, (2, 16, 20))
    targets[0, :6] = 255  # ignored rows (padding / unlabelled)
    targets[1, :, 15:] = 255
    loss = branch.losses(logits, targets, ignore_value=255)

    up = F.interpolate(logits, size=(16, 20), mode="bilinear", align_corners=False)
    logp = F.log_softmax(up, 1)
    valid = targets != 255
    picked = logp.gather(1, targets.clamp(max=2)[:, None])[:, 0]
    expected = -picked[valid].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # and it is what detectron2's SemSegFPNHead computes (stride 4 here: 4x5 -> 16x20)
    ref = F.cross_entropy(
        F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False), targets, ignore_index=255
    )
    assert torch.allclose(loss, ref, atol=1e-6)


def test_ignored_pixels_contribute_nothing():
    torch.manual_seed(2)
    branch = SemanticBranch(4, num_classes=2, conv_dim=4)
    logits = torch.randn(1, 3, 8, 8)
    targets = torch.randint(0, 3, (1, 8, 8))
    targets[0, :, :4] = 7  # ignore_value 7
    base = branch.losses(logits, targets, ignore_value=7)
    # whatever the network predicts at the ignored pixels, the loss does not move
    changed = logits.clone()
    changed[..., :3] = torch.randn(1, 3, 8, 3) * 10  # left columns only (bilinear 1:1, no mixing)
    assert torch.allclose(branch.losses(changed, targets, ignore_value=7), base)
    # gradient reaches only labelled columns
    logits.requires_grad_(True)
    branch.losses(logits, targets, ignore_value=7).backward()
    assert logits.grad[..., :4].abs().max() == 0
    assert logits.grad[..., 4:].abs().max() > 0


def test_all_ignored_gives_zero_loss_connected_to_the_branch():
    torch.manual_seed(3)
    branch = SemanticBranch(4, num_classes=2, conv_dim=4)
    logits = branch(torch.randn(1, 4, 4, 4))
    loss = branch.losses(logits, torch.full((1, 32, 32), 255, dtype=torch.long), ignore_value=255)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert branch.predictor.weight.grad is not None


def test_loss_rejects_bad_targets():
    branch = SemanticBranch(4, num_classes=2, conv_dim=4)
    logits = torch.zeros(1, 3, 4, 4)
    targets = torch.zeros(1, 16, 16, dtype=torch.long)
    targets[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"labels \[5\] are outside \[0, 2\].*IGNORE_VALUE") as info:
        branch.losses(logits, targets, ignore_value=255)
    # the background is label 0 (c + 1 is class c), not the last label
    assert "0 = background, c + 1 = thing class c" in str(info.value)
    assert "background 2" not in str(info.value)
    with pytest.raises(TypeError, match="int64"):
        branch.losses(logits, targets.float(), ignore_value=255)
    with pytest.raises(ValueError, match=r"\(N, H_img, W_img\)"):
        branch.losses(logits, targets[0], ignore_value=255)


# ---- crop_roi_prior ------------------------------------------------------------------------------------
def test_crop_is_roi_align_of_the_probabilities():
    # channel 0 a ramp along x in feature pixels, channel 1 = 1 - channel 0: bilinear sampling of
    # a linear function is exact, so each bin holds the ramp at its centre (aligned: -0.5 shift)
    H, W, stride, M = 10, 12, 16, 4
    u = torch.arange(W, dtype=torch.float32)
    p0 = (0.05 + 0.07 * u).expand(H, W)
    probs = torch.stack([p0, 1 - p0])[None]
    x1, y1, x2, y2 = 40.0, 48.0, 136.0, 112.0
    rois = torch.tensor([[0, x1, y1, x2, y2]])
    crop = crop_roi_prior(probs, rois, M, 1.0 / stride)
    assert crop.shape == (1, 2, M, M)
    centres = x1 / stride - 0.5 + (torch.arange(M) + 0.5) * (x2 - x1) / stride / M
    expected = (0.05 + 0.07 * centres).expand(M, M)
    assert torch.allclose(crop[0, 0], expected, atol=1e-5)
    assert torch.allclose(crop.sum(1), torch.ones(1, M, M), atol=1e-5)  # still a distribution


def test_crop_and_its_gradient_match_torchvision_roi_align():
    # the crop runs on the native k = 1 assembling; torchvision's roi_align is the definition
    from torchvision.ops import roi_align

    torch.manual_seed(5)
    probs = F.softmax(torch.randn(2, 4, 9, 11, dtype=torch.float64), 1).requires_grad_(True)
    rois = torch.tensor(
        [[0, 3.0, 5.0, 90.0, 70.0], [1, 20.5, 0.0, 175.0, 143.0], [0, 50.0, 60.0, 58.0, 66.0]], dtype=torch.float64
    )
    for sampling_ratio in (0, 2):
        ours = crop_roi_prior(probs, rois, 6, 1 / 16, sampling_ratio)
        ref = roi_align(probs, rois, 6, 1 / 16, sampling_ratio, aligned=True)
        torch.testing.assert_close(ours, ref)
        weights = torch.randn_like(ref)
        (g_ours,) = torch.autograd.grad((ours * weights).sum(), probs)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), probs)
        torch.testing.assert_close(g_ours, g_ref)


def test_crop_picks_the_rois_image_and_rejects_bad_rois():
    probs = torch.stack([torch.full((2, 6, 6), 0.2), torch.full((2, 6, 6), 0.8)], 1)  # (N=2, C+1=2, 6, 6)
    probs[1] = probs[1].flip(0)
    crop = crop_roi_prior(probs, torch.tensor([[1, 0.0, 0.0, 40.0, 40.0], [0, 8.0, 8.0, 40.0, 40.0]]), 3, 1 / 8)
    assert torch.allclose(crop[0, 0], torch.full((3, 3), 0.8)) and torch.allclose(crop[1, 0], torch.full((3, 3), 0.2))
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        crop_roi_prior(probs, torch.zeros(3, 4), 3, 1 / 8)
    with pytest.raises(ValueError, match="output_size"):
        crop_roi_prior(probs, torch.zeros(3, 5), 0, 1 / 8)


# ---- combine_prior -------------------------------------------------------------------------------------
def _likelihoods(seed=0, shape=(3, 4, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    inside = torch.randn(shape, generator=g) * 3
    outside = torch.randn(shape, generator=g) * 3
    prior = F.softmax(torch.randn(shape, generator=g) * 2, dim=1)
    return inside, outside, prior


def test_product_is_the_papers_elementwise_product_outside_unchanged():
    inside, outside, prior = _likelihoods()
    new_inside, new_outside = combine_prior(inside, outside, prior, mode="product")
    assert torch.equal(new_inside, inside * prior)
    assert new_outside is outside
    # the documented consequence for logits: a prior < 1 moves a negative inside score up
    # (towards 0), i.e. raises softmax(inside, outside)'s foreground probability there
    neg = inside < 0
    fg_before = torch.sigmoid(inside - outside)
    fg_after = torch.sigmoid(new_inside - outside)
    assert (fg_after[neg] >= fg_before[neg]).all() and (fg_after[~neg] <= fg_before[~neg]).all()


def test_log_form_gives_the_bayesian_posterior():
    inside, outside, prior = _likelihoods(1)
    new_inside, new_outside = combine_prior(inside, outside, prior, mode="log", eps=0.0)
    assert new_outside is outside
    assert torch.allclose(new_inside, inside + prior.log())
    # softmax over (inside', outside) = p e^in / (p e^in + e^out): the likelihood times the prior
    fg = torch.softmax(torch.stack([new_inside, outside]), 0)[0]
    bayes = prior * inside.exp() / (prior * inside.exp() + outside.exp())
    assert torch.allclose(fg, bayes, atol=1e-5)
    # a lower prior always lowers the foreground posterior, whatever the sign of inside
    lower, _ = combine_prior(inside, outside, prior * 0.5, mode="log", eps=0.0)
    assert (torch.sigmoid(lower - outside) < torch.sigmoid(new_inside - outside)).all()
    # eps keeps a zero prior finite
    zero, _ = combine_prior(inside, outside, torch.zeros_like(prior), mode="log", eps=1e-6)
    assert torch.allclose(zero, inside + math.log(1e-6))


@pytest.mark.parametrize("mode", ["product", "log"])
def test_gradient_reaches_the_prior_and_the_likelihoods(mode):
    inside, outside, prior = (t.requires_grad_(True) for t in _likelihoods(2))
    new_inside, new_outside = combine_prior(inside, outside, prior, mode=mode)
    (new_inside.sum() + new_outside.sum()).backward()
    expected_prior_grad = inside.detach() if mode == "product" else 1 / (prior.detach() + 1e-6)
    assert torch.allclose(prior.grad, expected_prior_grad, rtol=1e-4)
    assert torch.allclose(outside.grad, torch.ones_like(outside))


def test_combine_rejects_bad_mode_and_shapes():
    inside, outside, prior = _likelihoods()
    with pytest.raises(ValueError, match="mode must be one of.*PRIOR_MODE.*'sum'"):
        combine_prior(inside, outside, prior, mode="sum")
    with pytest.raises(ValueError, match="one shape"):
        combine_prior(inside, outside, prior[:, :3], mode="product")


# ---- fuse_likelihoods ----------------------------------------------------------------------------------
def test_fusion_upsamples_coarse_x2_and_sums():
    R, K, M = 2, 6, 8
    g = torch.Generator().manual_seed(3)
    fine = torch.randn(R, K, M, M, generator=g)
    # a coarse map linear along x: bilinear x2 (align_corners=False) reproduces the line at the
    # fine bin centres, x_coarse = (x_fine + 0.5) / 2 - 0.5, clamped at the borders
    ramp = torch.arange(M // 2, dtype=torch.float32)
    coarse = (2.0 + 3.0 * ramp).expand(R, K, M // 2, M // 2).contiguous()
    fused = fuse_likelihoods(coarse, fine)
    assert fused.shape == (R, K, M, M)
    xc = ((torch.arange(M) + 0.5) / 2 - 0.5).clamp(0, M // 2 - 1)
    assert torch.allclose(fused - fine, (2.0 + 3.0 * xc).expand(R, K, M, M), atol=1e-5)
    # a constant coarse map adds its constant
    assert torch.allclose(fuse_likelihoods(torch.full((R, K, M // 2, M // 2), 1.5), fine), fine + 1.5)


def test_fusion_shape_errors():
    with pytest.raises(ValueError, match="even side M"):
        fuse_likelihoods(torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 7, 7))
    with pytest.raises(ValueError, match=r"coarse must be \(R, K, M/2, M/2\) = \(1, 4, 4, 4\)"):
        fuse_likelihoods(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"coarse must be"):
        fuse_likelihoods(torch.zeros(2, 4, 4, 4), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="4-D"):
        fuse_likelihoods(torch.zeros(1, 2, 2, 4, 4), torch.zeros(1, 4, 8, 8))
