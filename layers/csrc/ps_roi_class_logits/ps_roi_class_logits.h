// FCIS's class logits of RoIs read straight from the inside/outside score maps (inference only).
//
// Contract shared by the CPU (ps_roi_class_logits_cpu.cpp) and CUDA (ps_roi_class_logits_cuda.cu)
// kernels; the operator is registered in ../vision.cpp as
//   instfcn_d2::ps_roi_class_logits(Tensor input, Tensor rois, float spatial_scale, int output_size,
//                                   int group_size, int sampling_ratio, bool aligned,
//                                   int num_classes) -> Tensor
//
// Shapes (k = group_size, m = output_size, k <= m, C = num_classes, C1 = C + 1):
//   input  (N, k*k*2*C1, H, W)  FCIS's inside/outside maps (instfcn_d2/core/fcis/layout.py)
//   rois   (R, 5)               as ps_roi_assemble's
//   output (R, C1)
//
// Semantics: with A = ps_roi_assemble(input, rois, ...) of shape (R, 2*C1, m, m),
//   output[r, c] = mean over the m x m cells (i, j) of max(A[r, c, i, j], A[r, C1 + c, i, j])
// (inside_outside_class_logits(split_inside_outside(A)): the inside score of class c is assembled
// output channel c, its outside score C1 + c), without materialising A: each (r, c) assembles its
// 2 * m * m bins and adds up their maxima. The bins are those of ps_roi_assemble, computed the
// same way (on the CPU with its tap tables and bin expression, ../ps_roi_assemble/
// ps_roi_assemble_cpu_tables.h; on the GPU with bin_average of ../common/sampling.h, which its
// forward kernel calls), so they equal A's bit for bit on the same device;
// only the sum over the cells is added up in another order than torch's mean (CPU: in double for
// float32; CUDA: in float for float16 / bfloat16, whose bins are rounded to that dtype first, as A
// stores them). The max is NaN when either score is (as torch.amax). No gradient: the op is for
// inference (FCIS's test-time class scores); train through ps_roi_assemble.
//
// CPU kernel: float32 / float64, a RoI whose batch index is not in [0, N) is refused. CUDA
// kernel: float32 / float64 / float16 / bfloat16, such a RoI gives zeros (as ps_roi_assemble's).
#pragma once

#include "ps_roi_assemble/ps_roi_assemble.h"

#include <ATen/ATen.h>

namespace instfcn_d2 {

at::Tensor ps_roi_class_logits_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes);

#ifdef WITH_CUDA
at::Tensor ps_roi_class_logits_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes);
#endif

// Argument checks shared by both kernels (the Python layer checks first, with the same messages).
inline void ps_roi_class_logits_check(
    const at::Tensor& input,
    const at::Tensor& rois,
    int64_t output_size,
    int64_t group_size,
    int64_t num_classes) {
  ps_roi_assemble_check_sizes(output_size, group_size);
  TORCH_CHECK(num_classes >= 0, "ps_roi_class_logits: num_classes (C) must be >= 0, got ", num_classes);
  TORCH_CHECK(
      input.dim() == 4,
      "ps_roi_class_logits: input must have shape (N, k*k*2*(C+1), H, W), got ",
      input.sizes());
  const int64_t expected = group_size * group_size * 2 * (num_classes + 1);
  TORCH_CHECK(
      input.size(1) == expected,
      "ps_roi_class_logits: input has ",
      input.size(1),
      " channels, expected k*k*2*(C+1) = ",
      expected,
      " for k = ",
      group_size,
      ", C = ",
      num_classes,
      " (FCIS's inside/outside maps)");
  ps_roi_assemble_check_rois(rois, input, "input");
}

} // namespace instfcn_d2
