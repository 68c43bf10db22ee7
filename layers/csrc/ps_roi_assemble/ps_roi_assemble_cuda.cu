// CUDA kernels of instfcn_d2::ps_roi_assemble (semantics: ps_roi_assemble.h).
//
// One thread per output bin (forward) or per gradient bin (backward), as torchvision's
// ps_roi_align kernels; coordinates and sums use at::opmath_type (float for float16 /
// bfloat16). The backward scatters with atomics into a buffer of that type, converted to the
// gradient's dtype at the end. A RoI whose batch index is not in [0, N) gives zeros (checking it
// on the host would need a device-to-host copy).
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "ps_roi_assemble/bilinear.h"

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

// Geometry of one RoI (shared by forward and backward).
template <typename acc_t>
struct RoiGeometry {
  acc_t y1, x1, bin_h, bin_w, count;
  int64_t grid_h, grid_w;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RoiGeometry<acc_t> roi_geometry(
    const scalar_t* roi,
    acc_t spatial_scale,
    int64_t m,
    int64_t sampling_ratio,
    bool aligned) {
  RoiGeometry<acc_t> g;
  const acc_t offset = aligned ? static_cast<acc_t>(0.5) : static_cast<acc_t>(0.0);
  g.x1 = static_cast<acc_t>(roi[1]) * spatial_scale - offset;
  g.y1 = static_cast<acc_t>(roi[2]) * spatial_scale - offset;
  const acc_t x2 = static_cast<acc_t>(roi[3]) * spatial_scale - offset;
  const acc_t y2 = static_cast<acc_t>(roi[4]) * spatial_scale - offset;
  acc_t roi_w = x2 - g.x1;
  acc_t roi_h = y2 - g.y1;
  if (!aligned) {
    roi_w = max(roi_w, static_cast<acc_t>(1.));
    roi_h = max(roi_h, static_cast<acc_t>(1.));
  }
  g.bin_h = roi_h / static_cast<acc_t>(m);
  g.bin_w = roi_w / static_cast<acc_t>(m);
  g.grid_h = samples_per_bin_side(roi_h, m, sampling_ratio);
  g.grid_w = samples_per_bin_side(roi_w, m, sampling_ratio);
  g.count = static_cast<acc_t>(max(g.grid_h * g.grid_w, int64_t(1)));
  return g;
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_assemble_forward_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ rois,
    acc_t spatial_scale,
    int64_t N,
    int64_t C,
    int64_t H,
    int64_t W,
    int64_t k,
    int64_t m,
    int64_t sampling_ratio,
    bool aligned,
    scalar_t* __restrict__ output) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % m;
    const int64_t ph = (index / m) % m;
    const int64_t c = (index / (m * m)) % C;
    const int64_t r = index / (m * m * C);
    const scalar_t* roi = rois + r * 5;
    const acc_t b = static_cast<acc_t>(roi[0]);
    if (!(b >= 0 && b < static_cast<acc_t>(N))) {
      output[index] = static_cast<scalar_t>(0);
      continue;
    }
    const int64_t n = static_cast<int64_t>(b);
    const RoiGeometry<acc_t> g = roi_geometry<scalar_t, acc_t>(roi, spatial_scale, m, sampling_ratio, aligned);
    const int64_t gi = ph * k / m, gj = pw * k / m;
    const scalar_t* plane = input + ((n * C + c) * k * k + gi * k + gj) * H * W;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const acc_t y = g.y1 + static_cast<acc_t>(ph) * g.bin_h +
          static_cast<acc_t>(iy + .5f) * g.bin_h / static_cast<acc_t>(g.grid_h);
      int64_t ylo, yhi;
      acc_t wylo, wyhi;
      if (!axis_bilinear(y, H, ylo, yhi, wylo, wyhi)) {
        continue;
      }
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const acc_t x = g.x1 + static_cast<acc_t>(pw) * g.bin_w +
            static_cast<acc_t>(ix + .5f) * g.bin_w / static_cast<acc_t>(g.grid_w);
        int64_t xlo, xhi;
        acc_t wxlo, wxhi;
        if (!axis_bilinear(x, W, xlo, xhi, wxlo, wxhi)) {
          continue;
        }
        sum += wylo * wxlo * static_cast<acc_t>(plane[ylo * W + xlo]) +
            wylo * wxhi * static_cast<acc_t>(plane[ylo * W + xhi]) +
            wyhi * wxlo * static_cast<acc_t>(plane[yhi * W + xlo]) +
            wyhi * wxhi * static_cast<acc_t>(plane[yhi * W + xhi]);
      }
    }
    output[index] = static_cast<scalar_t>(sum / g.count);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_assemble_backward_kernel(
    int64_t total,
    const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ rois,
    acc_t spatial_scale,
    int64_t N,
    int64_t C,
    int64_t H,
    int64_t W,
    int64_t k,
    int64_t m,
    int64_t sampling_ratio,
    bool aligned,
    acc_t* __restrict__ grad_input) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % m;
    const int64_t ph = (index / m) % m;
    const int64_t c = (index / (m * m)) % C;
    const int64_t r = index / (m * m * C);
    const scalar_t* roi = rois + r * 5;
    const acc_t b = static_cast<acc_t>(roi[0]);
    if (!(b >= 0 && b < static_cast<acc_t>(N))) {
      continue;
    }
    const int64_t n = static_cast<int64_t>(b);
    const RoiGeometry<acc_t> g = roi_geometry<scalar_t, acc_t>(roi, spatial_scale, m, sampling_ratio, aligned);
    const acc_t gv = static_cast<acc_t>(grad[index]) / g.count;
    if (gv == 0) {
      continue;
    }
    const int64_t gi = ph * k / m, gj = pw * k / m;
    acc_t* plane = grad_input + ((n * C + c) * k * k + gi * k + gj) * H * W;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const acc_t y = g.y1 + static_cast<acc_t>(ph) * g.bin_h +
          static_cast<acc_t>(iy + .5f) * g.bin_h / static_cast<acc_t>(g.grid_h);
      int64_t ylo, yhi;
      acc_t wylo, wyhi;
      if (!axis_bilinear(y, H, ylo, yhi, wylo, wyhi)) {
        continue;
      }
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const acc_t x = g.x1 + static_cast<acc_t>(pw) * g.bin_w +
            static_cast<acc_t>(ix + .5f) * g.bin_w / static_cast<acc_t>(g.grid_w);
        int64_t xlo, xhi;
        acc_t wxlo, wxhi;
        if (!axis_bilinear(x, W, xlo, xhi, wxlo, wxhi)) {
          continue;
        }
        gpuAtomicAddNoReturn(plane + ylo * W + xlo, gv * wylo * wxlo);
        gpuAtomicAddNoReturn(plane + ylo * W + xhi, gv * wylo * wxhi);
        gpuAtomicAddNoReturn(plane + yhi * W + xlo, gv * wyhi * wxlo);
        gpuAtomicAddNoReturn(plane + yhi * W + xhi, gv * wyhi * wxhi);
      }
    }
  }
}

} // namespace

at::Tensor ps_roi_assemble_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned) {
  ps_roi_assemble_check_forward(input, rois, output_size, group_size);
  TORCH_CHECK(input.is_cuda(), "ps_roi_assemble_forward_cuda: input must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t N = input.size(0), Cin = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = output_size, C = Cin / (k * k), R = rois.size(0);
  at::Tensor output = at::empty({R, C, m, m}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  if (input.numel() == 0) {
    return output.zero_();
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t total = output.numel();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "ps_roi_assemble_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        ps_roi_assemble_forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total,
            input_c.data_ptr<scalar_t>(),
            rois_c.data_ptr<scalar_t>(),
            static_cast<acc_t>(spatial_scale),
            N,
            C,
            H,
            W,
            k,
            m,
            sampling_ratio,
            aligned,
            output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

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
    int64_t width) {
  ps_roi_assemble_check_backward(grad, rois, output_size, group_size, channels);
  TORCH_CHECK(grad.is_cuda(), "ps_roi_assemble_backward_cuda: grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const int64_t k = group_size, m = output_size, C = channels / (k * k);
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t total = grad_c.numel();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, grad.scalar_type(), "ps_roi_assemble_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        ps_roi_assemble_backward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total,
            grad_c.data_ptr<scalar_t>(),
            rois_c.data_ptr<scalar_t>(),
            static_cast<acc_t>(spatial_scale),
            batch_size,
            C,
            height,
            width,
            k,
            m,
            sampling_ratio,
            aligned,
            grad_input.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input.to(grad.scalar_type());
}

} // namespace instfcn_d2
