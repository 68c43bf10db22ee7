// Instance-sensitive window assembling (InstanceFCN).
//
// Contract shared by the CPU (window_assemble_cpu.cpp) and CUDA (window_assemble_cuda.cu)
// kernels; the operators are registered in ../vision.cpp as
//   instfcn_d2::window_assemble(Tensor input, Tensor positions, int window_size,
//       int group_size) -> Tensor
//   instfcn_d2::window_assemble_backward(Tensor grad, Tensor positions, int window_size,
//       int group_size, SymInt batch_size, SymInt height, SymInt width) -> Tensor
//
// Shapes (k = group_size, m = window_size, k <= m):
//   input      (N, k*k, H, W)       instance-sensitive score maps
//   positions  (P, 3) int64         rows (batch_index, y, x): window top-left corners, which may
//                                   lie partly or wholly outside the map
//   listed     (P, m, m)
//
// Semantics: pure copying, no interpolation. Pixel (u, v) of the window with top-left corner
// (y, x) is input[n, gi*k + gj, y + u, x + v], gi = floor(u*k/m), gj = floor(v*k/m). Pixels
// outside the map read 0 and receive no gradient. Backward sums the gradients of every window
// pixel that copied an input pixel (CPU: each thread owns whole input planes, no atomics; CUDA:
// atomics, because windows may overlap).
//
// CPU kernels: float32 / float64. CUDA kernels: float32 / float64 / float16 / bfloat16.
// Both kernels take the grid cells and the rules for windows that leave the map from
// ../common/sampling.h.
#pragma once

#include <ATen/ATen.h>

namespace instfcn_d2 {

at::Tensor window_assemble_forward_cpu(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size);
at::Tensor window_assemble_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size,
    int64_t batch_size,
    int64_t height,
    int64_t width);

#ifdef WITH_CUDA
at::Tensor window_assemble_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size);
at::Tensor window_assemble_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size,
    int64_t batch_size,
    int64_t height,
    int64_t width);
#endif

// Argument checks shared by every kernel (the Python layer checks first, with the same words).
inline void window_assemble_check_sizes(int64_t window_size, int64_t group_size) {
  TORCH_CHECK(group_size >= 1, "window_assemble: group_size (k) must be >= 1, got ", group_size);
  TORCH_CHECK(window_size >= 1, "window_assemble: window_size (m) must be >= 1, got ", window_size);
  TORCH_CHECK(
      group_size <= window_size,
      "window_assemble: group_size (k = ",
      group_size,
      ") must be <= window_size (m = ",
      window_size,
      "): every grid cell needs at least one window pixel");
}

inline void window_assemble_check_input(const at::Tensor& input, int64_t window_size, int64_t group_size) {
  window_assemble_check_sizes(window_size, group_size);
  TORCH_CHECK(
      input.dim() == 4 && input.size(1) == group_size * group_size,
      "window_assemble: input must have shape (N, k*k, H, W) with k*k = ",
      group_size * group_size,
      " channels, got ",
      input.sizes());
}

inline void window_assemble_check_positions(const at::Tensor& positions, const at::Tensor& other, const char* other_name) {
  TORCH_CHECK(
      positions.dim() == 2 && positions.size(1) == 3,
      "window_assemble: positions must have shape (P, 3) = (batch_index, y, x), got ",
      positions.sizes());
  TORCH_CHECK(
      positions.scalar_type() == at::kLong,
      "window_assemble: positions must be int64, got ",
      positions.scalar_type());
  TORCH_CHECK(
      positions.device() == other.device(),
      "window_assemble: positions is on ",
      positions.device(),
      " but ",
      other_name,
      " is on ",
      other.device());
}

inline void window_assemble_check_forward(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size) {
  window_assemble_check_input(input, window_size, group_size);
  window_assemble_check_positions(positions, input, "input");
}

inline void window_assemble_check_backward(
    const at::Tensor& grad,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size) {
  window_assemble_check_sizes(window_size, group_size);
  window_assemble_check_positions(positions, grad, "grad");
  const int64_t P = positions.size(0), m = window_size;
  TORCH_CHECK(
      grad.dim() == 3 && grad.size(0) == P && grad.size(1) == m && grad.size(2) == m,
      "window_assemble_backward: grad must have shape (P, m, m) = (",
      P,
      ", ",
      m,
      ", ",
      m,
      "), got ",
      grad.sizes());
}

} // namespace instfcn_d2
