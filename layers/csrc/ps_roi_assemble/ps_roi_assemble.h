// Position-sensitive RoI assembling (FCIS / BiSeg; R-FCN's PSRoIPooling generalised to m != k).
//
// Contract shared by the CPU (ps_roi_assemble_cpu.cpp) and CUDA (ps_roi_assemble_cuda.cu)
// kernels; the operators are registered in ../vision.cpp as
//   instfcn_d2::ps_roi_assemble(Tensor input, Tensor rois, float spatial_scale, int output_size,
//                               int group_size, int sampling_ratio, bool aligned) -> Tensor
//   instfcn_d2::ps_roi_assemble_backward(Tensor grad, Tensor rois, float spatial_scale,
//       int output_size, int group_size, int sampling_ratio, bool aligned,
//       SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor
//
// Shapes (k = group_size, m = output_size, k <= m):
//   input  (N, k*k*C, H, W)   k*k position-sensitive channel groups per output channel
//   rois   (R, 5)             (batch_index, x1, y1, x2, y2) in image coordinates, same dtype
//                             and device as input
//   output (R, C, m, m)
//   backward: grad (R, C, m, m) -> grad_input (N, k*k*C, H, W)  [channels = k*k*C]
//
// Semantics. The RoI, scaled by spatial_scale, is split into m x m bins. Output bin (ph, pw)
// of output channel c belongs to grid cell gi = floor(ph*k/m), gj = floor(pw*k/m) and reads
// input channel (c*k + gi)*k + gj (the R-FCN / FCIS / torchvision ps_roi_align layout). Its
// value is the average of bilinear samples on a regular grid inside the bin, exactly as
// torchvision's roi_align / detectron2's ROIAlign:
//   aligned = true : RoI corners shifted by -0.5 (pixel centres), RoI size not clamped;
//   aligned = false: no shift, RoI width/height clamped to >= 1;
//   sampling_ratio > 0: that many samples per bin side; <= 0: adaptive, ceil(roi_size / m) but
//   at most kMaxAdaptiveSamples = 64 (common/sampling.h: bounds the work of a huge RoI);
//   a sample with y < -1 or y > H (or x < -1 or x > W) contributes 0; coordinates <= 0 clamp
//   to 0; coordinates at/after the last row/column read that row/column.
// Each bin is divided by the sample count max(grid_h * grid_w, 1).
// With m == k and aligned == true this equals torchvision.ops.ps_roi_align; with k == 1 it
// equals torchvision.ops.roi_align / detectron2's ROIAlign.
//
// CPU kernels: float32 / float64. CUDA kernels: float32 / float64 / float16 / bfloat16, with
// float accumulation. Backward is a scatter of each bin's gradient to its bilinear taps
// (atomics on CUDA; on the CPU each thread owns whole input planes, so there are no races and
// the result is deterministic).
// Both kernels take their arithmetic (RoI geometry, sampling, bilinear taps, channel of a bin)
// from ../common/sampling.h, so the CPU tests exercise the expressions the GPU evaluates.
#pragma once

#include <ATen/ATen.h>

namespace instfcn_d2 {

at::Tensor ps_roi_assemble_forward_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned);

at::Tensor ps_roi_assemble_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width);

#ifdef WITH_CUDA
at::Tensor ps_roi_assemble_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned);

at::Tensor ps_roi_assemble_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width);
#endif

// Argument checks shared by every kernel (clear messages; the Python layer checks first).
inline void ps_roi_assemble_check_sizes(int64_t output_size, int64_t group_size) {
  TORCH_CHECK(group_size >= 1, "ps_roi_assemble: group_size (k) must be >= 1, got ", group_size);
  TORCH_CHECK(output_size >= 1, "ps_roi_assemble: output_size (m) must be >= 1, got ", output_size);
  TORCH_CHECK(
      group_size <= output_size,
      "ps_roi_assemble: group_size (k = ",
      group_size,
      ") must be <= output_size (m = ",
      output_size,
      "): every grid cell needs at least one output bin");
}

inline void ps_roi_assemble_check_rois(const at::Tensor& rois, const at::Tensor& other, const char* other_name) {
  TORCH_CHECK(
      rois.dim() == 2 && rois.size(1) == 5,
      "ps_roi_assemble: rois must have shape (R, 5) = (batch_index, x1, y1, x2, y2), got ",
      rois.sizes());
  TORCH_CHECK(
      rois.device() == other.device(),
      "ps_roi_assemble: rois is on ",
      rois.device(),
      " but ",
      other_name,
      " is on ",
      other.device());
  TORCH_CHECK(
      rois.scalar_type() == other.scalar_type(),
      "ps_roi_assemble: rois has dtype ",
      rois.scalar_type(),
      " but ",
      other_name,
      " has dtype ",
      other.scalar_type(),
      "; convert rois with rois.to(",
      other_name,
      ".dtype)");
}

inline void ps_roi_assemble_check_forward(
    const at::Tensor& input,
    const at::Tensor& rois,
    int64_t output_size,
    int64_t group_size) {
  ps_roi_assemble_check_sizes(output_size, group_size);
  TORCH_CHECK(input.dim() == 4, "ps_roi_assemble: input must have shape (N, k*k*C, H, W), got ", input.sizes());
  TORCH_CHECK(
      input.size(1) % (group_size * group_size) == 0,
      "ps_roi_assemble: input has ",
      input.size(1),
      " channels, not divisible by k*k = ",
      group_size * group_size);
  ps_roi_assemble_check_rois(rois, input, "input");
}

inline void ps_roi_assemble_check_backward(
    const at::Tensor& grad,
    const at::Tensor& rois,
    int64_t output_size,
    int64_t group_size,
    int64_t channels) {
  ps_roi_assemble_check_sizes(output_size, group_size);
  TORCH_CHECK(
      channels % (group_size * group_size) == 0,
      "ps_roi_assemble_backward: channels = ",
      channels,
      " not divisible by k*k = ",
      group_size * group_size);
  ps_roi_assemble_check_rois(rois, grad, "grad");
  TORCH_CHECK(
      grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels / (group_size * group_size) &&
          grad.size(2) == output_size && grad.size(3) == output_size,
      "ps_roi_assemble_backward: grad must have shape (R, C, m, m) = (",
      rois.size(0),
      ", ",
      channels / (group_size * group_size),
      ", ",
      output_size,
      ", ",
      output_size,
      "), got ",
      grad.sizes());
}

} // namespace instfcn_d2
