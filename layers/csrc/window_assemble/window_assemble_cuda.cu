// CUDA kernels of the instfcn_d2::window_assemble* operators (semantics: window_assemble.h).
//
// Forward: one thread per output pixel, a plain copy (consecutive threads write consecutive
// memory and read runs of the same input row). Backward: one thread per window pixel with
// atomics (listed windows may overlap) into a buffer of at::opmath_type (float for float16 /
// bfloat16). Listed windows whose batch index is not in [0, N) read 0 and receive no gradient.
//
// Which input pixel a window pixel copies, and whether it lies on the map, is decided by
// window_pixel_offset in ../common/sampling.h, shared with the CPU kernels; this file holds only
// the thread-to-pixel indexing, the launches and the atomics.
#include "window_assemble/window_assemble.h"
#include "common/cuda_launch.cuh"
#include "common/sampling.h"

#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAGuard.h>

namespace instfcn_d2 {
namespace {

// Offset in the input of element `index` of the (P, m, m) listed windows; -1 off the map.
__device__ __forceinline__ int64_t listed_source(int64_t index, const int64_t* positions, const WindowMap& w) {
  const int64_t v = index % w.m;
  const int64_t u = (index / w.m) % w.m;
  const int64_t* pos = positions + index / (w.m * w.m) * 3;
  return window_pixel_offset(w, pos[0], pos[1], pos[2], u, v);
}

template <typename scalar_t>
__global__ void listed_forward_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const int64_t* __restrict__ positions,
    WindowMap w,
    scalar_t* __restrict__ output) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    const int64_t src = listed_source(index, positions, w);
    output[index] = src < 0 ? static_cast<scalar_t>(0) : input[src];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void listed_backward_kernel(
    int64_t total,
    const scalar_t* __restrict__ grad,
    const int64_t* __restrict__ positions,
    WindowMap w,
    acc_t* __restrict__ grad_input) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    const int64_t dst = listed_source(index, positions, w);
    if (dst >= 0) {
      gpuAtomicAddNoReturn(grad_input + dst, static_cast<acc_t>(grad[index]));
    }
  }
}

} // namespace

at::Tensor window_assemble_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size) {
  window_assemble_check_forward(input, positions, window_size, group_size);
  TORCH_CHECK(input.is_cuda(), "window_assemble_forward_cuda: input must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const WindowMap w{input.size(0), input.size(2), input.size(3), group_size, window_size};
  at::Tensor output = at::empty({positions.size(0), w.m, w.m}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor in = input.contiguous();
  const at::Tensor pos = positions.contiguous();
  INSTFCN_DISPATCH_CUDA_TYPES(input.scalar_type(), "window_assemble_forward_cuda", [&] {
    launch_1d(
        listed_forward_kernel<scalar_t>,
        output.numel(),
        in.data_ptr<scalar_t>(),
        pos.data_ptr<int64_t>(),
        w,
        output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor window_assemble_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size,
    int64_t batch_size,
    int64_t height,
    int64_t width) {
  window_assemble_check_backward(grad, positions, window_size, group_size);
  TORCH_CHECK(grad.is_cuda(), "window_assemble_backward_cuda: grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const WindowMap w{batch_size, height, width, group_size, window_size};
  at::Tensor grad_input = opmath_zeros({w.N, w.k * w.k, w.H, w.W}, grad);
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor pos = positions.contiguous();
  INSTFCN_DISPATCH_CUDA_TYPES(grad.scalar_type(), "window_assemble_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_1d(
        listed_backward_kernel<scalar_t, acc_t>,
        g.numel(),
        g.data_ptr<scalar_t>(),
        pos.data_ptr<int64_t>(),
        w,
        grad_input.data_ptr<acc_t>());
  });
  return grad_input.to(grad.scalar_type());
}

} // namespace instfcn_d2
