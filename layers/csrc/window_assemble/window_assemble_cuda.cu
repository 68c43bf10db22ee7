// CUDA kernels of the instfcn_d2::window_assemble* operators (semantics: window_assemble.h).
//
// Forward: one thread per output pixel, a plain copy (consecutive threads write consecutive
// memory and read runs of the same input row). Backward: one thread per window pixel with
// atomics (listed windows may overlap) into a
// buffer of at::opmath_type (float for float16 / bfloat16). Listed windows whose batch index is
// not in [0, N) read 0 and receive no gradient.
#include "window_assemble/window_assemble.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace instfcn_d2 {
namespace {

constexpr int kThreads = 256;

inline int64_t num_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16);
}

#define GRID_STRIDE_LOOP(i, n)                                                                   \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

template <typename scalar_t>
__global__ void listed_forward_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const int64_t* __restrict__ positions,
    int64_t N,
    int64_t H,
    int64_t W,
    int64_t k,
    int64_t m,
    scalar_t* __restrict__ output) {
  GRID_STRIDE_LOOP(index, total) {
    const int64_t v = index % m;
    const int64_t u = (index / m) % m;
    const int64_t p = index / (m * m);
    const int64_t n = positions[p * 3], row = positions[p * 3 + 1] + u, col = positions[p * 3 + 2] + v;
    scalar_t value = static_cast<scalar_t>(0);
    if (n >= 0 && n < N && row >= 0 && row < H && col >= 0 && col < W) {
      const int64_t cell = (u * k / m) * k + v * k / m;
      value = input[((n * k * k + cell) * H + row) * W + col];
    }
    output[index] = value;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void listed_backward_kernel(
    int64_t total,
    const scalar_t* __restrict__ grad,
    const int64_t* __restrict__ positions,
    int64_t N,
    int64_t H,
    int64_t W,
    int64_t k,
    int64_t m,
    acc_t* __restrict__ grad_input) {
  GRID_STRIDE_LOOP(index, total) {
    const int64_t v = index % m;
    const int64_t u = (index / m) % m;
    const int64_t p = index / (m * m);
    const int64_t n = positions[p * 3], row = positions[p * 3 + 1] + u, col = positions[p * 3 + 2] + v;
    if (n >= 0 && n < N && row >= 0 && row < H && col >= 0 && col < W) {
      const int64_t cell = (u * k / m) * k + v * k / m;
      gpuAtomicAddNoReturn(grad_input + ((n * k * k + cell) * H + row) * W + col, static_cast<acc_t>(grad[index]));
    }
  }
}

} // namespace

at::Tensor window_assemble_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size) {
  window_assemble_check_input(input, window_size, group_size);
  window_assemble_check_positions(positions, input, "input");
  TORCH_CHECK(input.is_cuda(), "window_assemble_forward_cuda: input must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = window_size, P = positions.size(0);
  at::Tensor output = at::empty({P, m, m}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor in = input.contiguous();
  const at::Tensor pos = positions.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "window_assemble_forward_cuda", [&] {
        listed_forward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, in.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), N, H, W, k, m, output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  window_assemble_check_sizes(window_size, group_size);
  window_assemble_check_positions(positions, grad, "grad");
  TORCH_CHECK(grad.is_cuda(), "window_assemble_backward_cuda: grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const int64_t k = group_size, m = window_size, P = positions.size(0);
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
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, k * k, height, width}, grad.options().dtype(acc_type));
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor pos = positions.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, grad.scalar_type(), "window_assemble_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        listed_backward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total,
            g.data_ptr<scalar_t>(),
            pos.data_ptr<int64_t>(),
            batch_size,
            height,
            width,
            k,
            m,
            grad_input.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input.to(grad.scalar_type());
}

} // namespace instfcn_d2
