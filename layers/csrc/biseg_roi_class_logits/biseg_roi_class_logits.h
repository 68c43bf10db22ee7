// BiSeg's class logits of RoIs read straight from its two inside/outside map sets and its semantic
// prior (inference only).
//
// Contract shared by the CPU (biseg_roi_class_logits_cpu.cpp) and CUDA
// (biseg_roi_class_logits_cuda.cu) kernels; the operator is registered in ../vision.cpp as
//   instfcn_d2::biseg_roi_class_logits(Tensor coarse, Tensor? fine, Tensor? prior, Tensor rois,
//       float spatial_scale, int group_size, float fine_spatial_scale, int fine_group_size,
//       int mask_size, int sampling_ratio, bool aligned, int num_classes, int prior_mode,
//       float eps) -> Tensor
//
// Shapes (C1 = num_classes + 1, M = mask_size, k1 = group_size, k2 = fine_group_size):
//   coarse (N, k1*k1*2*C1, H, W)    FCIS's inside/outside maps (stride 1 / spatial_scale)
//   fine   (N, k2*k2*2*C1, H2, W2)  the second set (stride 1 / fine_spatial_scale), or none
//   prior  (N, C1, Hp, Wp)          the semantic probabilities in FCIS's class order (background
//                                   last), at spatial_scale; none when prior_mode is kPriorNone
//   rois   (R, 5)                   as ps_roi_assemble's
//   output (R, C1)
//
// Semantics (instfcn_d2/core/biseg/reading.py, BiSegReader.roi_inside_outside, then FCIS's
// read-out): with A = ps_roi_assemble,
//   L = upsample_x2(A(coarse, M/2, k1)) + A(fine, M, k2)     with fine (BiSeg's fused maps)
//   L = A(coarse, M, k1)                                     without
//   inside' = apply_prior(L inside, A(prior, M, 1, aligned=true), prior_mode, eps)
//   output[r, c] = mean over the M x M cells of max(inside', L outside)
// (../common/sampling.h: upsample2x_tap / upsample2x_at as torch's bilinear x2 upsampling with
// align_corners=False, apply_prior, inside_outside_max), without materialising any
// (R, 2, C1, M, M) tensor: each (RoI, class) assembles only its own planes. The bins are those of
// ps_roi_assemble (the CPU kernel calls its tap-table bins, the CUDA kernel bin_average); the
// arithmetic after them is torch's to float rounding (sums in another order). No gradient.
//
// CPU kernel: float32 / float64, a RoI whose batch index is not in [0, N) is refused. CUDA
// kernel: float32 / float64 / float16 / bfloat16, such a RoI gives zeros.
#pragma once

#include "ps_roi_assemble/ps_roi_assemble.h"

#include <ATen/ATen.h>

#include <optional>

namespace instfcn_d2 {

at::Tensor biseg_roi_class_logits_cpu(
    const at::Tensor& coarse,
    const std::optional<at::Tensor>& fine,
    const std::optional<at::Tensor>& prior,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t group_size,
    double fine_spatial_scale,
    int64_t fine_group_size,
    int64_t mask_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes,
    int64_t prior_mode,
    double eps);

#ifdef WITH_CUDA
at::Tensor biseg_roi_class_logits_cuda(
    const at::Tensor& coarse,
    const std::optional<at::Tensor>& fine,
    const std::optional<at::Tensor>& prior,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t group_size,
    double fine_spatial_scale,
    int64_t fine_group_size,
    int64_t mask_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes,
    int64_t prior_mode,
    double eps);
#endif

// Argument checks shared by both kernels (the Python layer checks first, with the same messages).
inline void biseg_roi_class_logits_check(
    const at::Tensor& coarse,
    const std::optional<at::Tensor>& fine,
    const std::optional<at::Tensor>& prior,
    const at::Tensor& rois,
    int64_t group_size,
    int64_t fine_group_size,
    int64_t mask_size,
    int64_t num_classes,
    int64_t prior_mode) {
  constexpr const char* op = "biseg_roi_class_logits";
  TORCH_CHECK(num_classes >= 0, op, ": num_classes (C) must be >= 0, got ", num_classes);
  TORCH_CHECK(
      prior_mode >= 0 && prior_mode <= 2, op, ": prior_mode must be 0 (none), 1 (product) or 2 (log), got ", prior_mode);
  const int64_t C1 = num_classes + 1;
  const bool fused = fine.has_value();
  TORCH_CHECK(!fused || mask_size % 2 == 0, op, ": mask_size must be even with fused maps (the coarse set is "
              "assembled at mask_size / 2 and upsampled x2), got ", mask_size);
  ps_roi_assemble_check_sizes(fused ? mask_size / 2 : mask_size, group_size);
  TORCH_CHECK(coarse.dim() == 4 && coarse.size(1) == group_size * group_size * 2 * C1, op,
              ": coarse must be (N, k1*k1*2*(C+1) = ", group_size * group_size * 2 * C1, ", H, W), got ", coarse.sizes());
  ps_roi_assemble_check_rois(rois, coarse, "coarse");
  if (fused) {
    const at::Tensor& f = *fine;
    ps_roi_assemble_check_sizes(mask_size, fine_group_size);
    TORCH_CHECK(f.dim() == 4 && f.size(0) == coarse.size(0) && f.size(1) == fine_group_size * fine_group_size * 2 * C1,
                op, ": fine must be (N = ", coarse.size(0), ", k2*k2*2*(C+1) = ", fine_group_size * fine_group_size * 2 * C1,
                ", H2, W2), got ", f.sizes());
    ps_roi_assemble_check_rois(rois, f, "fine");
  }
  TORCH_CHECK(prior.has_value() == (prior_mode != 0), op, ": a prior is needed exactly when prior_mode is not 0 (none); ",
              "prior_mode = ", prior_mode, (prior.has_value() ? " with" : " without"), " a prior");
  if (prior.has_value()) {
    const at::Tensor& p = *prior;
    TORCH_CHECK(p.dim() == 4 && p.size(0) == coarse.size(0) && p.size(1) == C1, op, ": prior must be (N = ",
                coarse.size(0), ", C+1 = ", C1, ", Hp, Wp), got ", p.sizes());
    ps_roi_assemble_check_rois(rois, p, "prior");
  }
}

} // namespace instfcn_d2
