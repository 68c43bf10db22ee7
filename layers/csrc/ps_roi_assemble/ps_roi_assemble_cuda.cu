// CUDA kernels of instfcn_d2::ps_roi_assemble (semantics: ps_roi_assemble.h).
//
// One thread per output bin (forward) or per gradient bin (backward), as torchvision's
// ps_roi_align kernels; coordinates and sums use at::opmath_type (float for float16 /
// bfloat16). The backward scatters with atomics into a buffer of that type, converted to the
// gradient's dtype at the end. A RoI whose batch index is not in [0, N) gives zeros (checking it
// on the host would need a device-to-host copy).
//
// The arithmetic (RoI geometry, sample coordinates and counts, bilinear taps and corners, the
// position-sensitive channel) is in ../common/sampling.h, shared with the CPU kernels; this file
// holds only the thread-to-bin indexing, the launches and the atomics.
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "common/cuda_launch.cuh"
#include "common/sampling.h"

#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAGuard.h>

namespace instfcn_d2 {
namespace {

// Sizes and arguments of one call (C: output channels; N, H, W: of the input).
template <typename acc_t>
struct PsArgs {
  acc_t spatial_scale;
  int64_t N, C, H, W, k, m, sampling_ratio;
  bool aligned;
};

// Bin `index` of the (R, C, m, m) output: its position, its RoI's geometry and the offset of the
// input plane it reads.
template <typename acc_t>
struct Bin {
  int64_t ph, pw, plane;
  RoiBins<acc_t> geometry;
};

// False for a RoI whose batch index is not in [0, N).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ bool
locate_bin(int64_t index, const scalar_t* rois, const PsArgs<acc_t>& a, Bin<acc_t>& bin) {
  bin.pw = index % a.m;
  bin.ph = (index / a.m) % a.m;
  const int64_t c = (index / (a.m * a.m)) % a.C;
  const int64_t r = index / (a.m * a.m * a.C);
  const scalar_t* roi = rois + r * 5;
  const int64_t n = roi_batch_index(static_cast<acc_t>(roi[0]), a.N);
  if (n < 0) {
    return false;
  }
  bin.geometry = roi_bins<acc_t>(roi, a.spatial_scale, a.m, a.sampling_ratio, a.aligned);
  const int64_t channel = cell_channel(c, grid_cell(bin.ph, a.k, a.m), grid_cell(bin.pw, a.k, a.m), a.k);
  bin.plane = (n * a.C * a.k * a.k + channel) * a.H * a.W;
  return true;
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_assemble_forward_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ rois,
    PsArgs<acc_t> a,
    scalar_t* __restrict__ output) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    Bin<acc_t> bin;
    if (!locate_bin(index, rois, a, bin)) {
      output[index] = static_cast<scalar_t>(0);
      continue;
    }
    output[index] = static_cast<scalar_t>(bin_average(bin.geometry, bin.ph, bin.pw, input + bin.plane, a.H, a.W));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void ps_roi_assemble_backward_kernel(
    int64_t total,
    const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ rois,
    PsArgs<acc_t> a,
    acc_t* __restrict__ grad_input) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    Bin<acc_t> bin;
    if (!locate_bin(index, rois, a, bin)) {
      continue;
    }
    const acc_t gv = static_cast<acc_t>(grad[index]) / bin.geometry.count;
    if (gv == 0) {
      continue;
    }
    acc_t* plane = grad_input + bin.plane;
    for_each_bin_sample(bin.geometry, bin.ph, bin.pw, a.H, a.W, [&](const BilinearSample<acc_t>& s) {
      // Four calls rather than a loop over the corners: with the loop, nvcc unrolls the sample
      // loop around it less.
      gpuAtomicAddNoReturn(plane + s.offset(0, a.W), s.grad_share(0, gv));
      gpuAtomicAddNoReturn(plane + s.offset(1, a.W), s.grad_share(1, gv));
      gpuAtomicAddNoReturn(plane + s.offset(2, a.W), s.grad_share(2, gv));
      gpuAtomicAddNoReturn(plane + s.offset(3, a.W), s.grad_share(3, gv));
    });
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
  INSTFCN_DISPATCH_CUDA_TYPES(input.scalar_type(), "ps_roi_assemble_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_1d(
        ps_roi_assemble_forward_kernel<scalar_t, acc_t>,
        output.numel(),
        input_c.data_ptr<scalar_t>(),
        rois_c.data_ptr<scalar_t>(),
        PsArgs<acc_t>{static_cast<acc_t>(spatial_scale), N, C, H, W, k, m, sampling_ratio, aligned},
        output.data_ptr<scalar_t>());
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
  at::Tensor grad_input = opmath_zeros({batch_size, channels, height, width}, grad);
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad.scalar_type());
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  INSTFCN_DISPATCH_CUDA_TYPES(grad.scalar_type(), "ps_roi_assemble_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_1d(
        ps_roi_assemble_backward_kernel<scalar_t, acc_t>,
        grad_c.numel(),
        grad_c.data_ptr<scalar_t>(),
        rois_c.data_ptr<scalar_t>(),
        PsArgs<acc_t>{static_cast<acc_t>(spatial_scale), batch_size, C, height, width, k, m, sampling_ratio, aligned},
        grad_input.data_ptr<acc_t>());
  });
  return grad_input.to(grad.scalar_type());
}

} // namespace instfcn_d2
