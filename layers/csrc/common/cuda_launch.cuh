// Launch code shared by the CUDA kernels of the assembling ops: one thread per element of a flat
// range (a grid-stride loop), on the current stream, dispatched over the CUDA dtypes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace instfcn_d2 {

constexpr int kThreads = 256;

inline int64_t num_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16);
}

// Each thread visits indices i = thread, thread + all threads, ... < n.
#define INSTFCN_CUDA_1D_LOOP(i, n)                                                            \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Launches kernel(total, args...) over `total` elements on the current stream.
template <typename... KernelArgs, typename... Args>
inline void launch_1d(void (*kernel)(int64_t, KernelArgs...), int64_t total, Args&&... args) {
  kernel<<<num_blocks(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(total, std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Zeros of `sizes` in the accumulation type of `like` (float for float16 / bfloat16): the buffer
// a backward kernel scatters into with atomics, converted to like's dtype at the end.
inline at::Tensor opmath_zeros(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::zeros(sizes, like.options().dtype(at::toOpMathType(like.scalar_type())));
}

// AT_DISPATCH over the dtypes of the CUDA kernels: float32 / float64 / float16 / bfloat16.
#define INSTFCN_DISPATCH_CUDA_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

} // namespace instfcn_d2
