// CUDA kernel of instfcn_d2::ps_roi_class_logits (semantics: ps_roi_class_logits.h).
//
// One warp per (RoI r, class c), its 32 lanes splitting the m x m cells (lane l takes cells l,
// l + 32, ...): each lane computes a cell's inside and outside bins with bin_average
// (../common/sampling.h, the function ps_roi_assemble's forward kernel computes its bins with),
// rounded to the input's dtype as ps_roi_assemble stores them, and adds up their maxima; a warp
// shuffle sums the lanes. (One thread per (r, c) would leave a GPU mostly idle: R * (C+1) = 24300
// threads at R = 300, C = 80, each walking 2 * 441 bins serially.) The warps of a block take
// consecutive classes of a RoI: the same geometry and trip counts, no divergence.
#include "ps_roi_class_logits/ps_roi_class_logits.h"
#include "common/cuda_launch.cuh"
#include "common/sampling.h"

#include <c10/cuda/CUDAGuard.h>

namespace instfcn_d2 {
namespace {

constexpr int kWarp = 32;

template <typename acc_t>
struct ClassArgs {
  acc_t spatial_scale;
  int64_t N, C1, H, W, k, m, sampling_ratio;
  bool aligned;
};

// `total` = 32 * R * C1 threads; with kThreads a multiple of 32, the 32 lanes of a warp hold the
// same (r, c) in every round of the grid-stride loop (total is a multiple of 32 too), so the
// whole warp is present at the shuffles.
template <typename scalar_t, typename acc_t>
__global__ void ps_roi_class_logits_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ rois,
    ClassArgs<acc_t> a,
    scalar_t* __restrict__ output) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    const int64_t item = index / kWarp; // r * C1 + c
    const int64_t lane = index % kWarp;
    const int64_t c = item % a.C1, r = item / a.C1;
    const scalar_t* roi = rois + r * 5;
    const int64_t n = roi_batch_index(static_cast<acc_t>(roi[0]), a.N);
    acc_t sum = 0;
    if (n >= 0) {
      const RoiBins<acc_t> g = roi_bins<acc_t>(roi, a.spatial_scale, a.m, a.sampling_ratio, a.aligned);
      const int64_t HW = a.H * a.W;
      const scalar_t* in_n = input + n * 2 * a.C1 * a.k * a.k * HW;
      for (int64_t p = lane; p < a.m * a.m; p += kWarp) {
        const int64_t ph = p / a.m, pw = p % a.m;
        const int64_t gi = grid_cell(ph, a.k, a.m), gj = grid_cell(pw, a.k, a.m);
        const scalar_t* inside_plane = in_n + cell_channel(inside_channel(c), gi, gj, a.k) * HW;
        const scalar_t* outside_plane = in_n + cell_channel(outside_channel(c, a.C1), gi, gj, a.k) * HW;
        const acc_t inside =
            static_cast<acc_t>(static_cast<scalar_t>(bin_average(g, ph, pw, inside_plane, a.H, a.W)));
        const acc_t outside =
            static_cast<acc_t>(static_cast<scalar_t>(bin_average(g, ph, pw, outside_plane, a.H, a.W)));
        sum += inside_outside_max(inside, outside);
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      output[item] = static_cast<scalar_t>(sum / static_cast<acc_t>(a.m * a.m));
    }
  }
}

} // namespace

at::Tensor ps_roi_class_logits_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes) {
  ps_roi_class_logits_check(input, rois, output_size, group_size, num_classes);
  TORCH_CHECK(input.is_cuda(), "ps_roi_class_logits_cuda: input must be a CUDA tensor");
  static_assert(kThreads % kWarp == 0, "a block must hold whole warps");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = output_size, C1 = num_classes + 1, R = rois.size(0);
  at::Tensor output = at::empty({R, C1}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  if (input.numel() == 0) {
    return output.zero_();
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  INSTFCN_DISPATCH_CUDA_TYPES(input.scalar_type(), "ps_roi_class_logits_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_1d(
        ps_roi_class_logits_kernel<scalar_t, acc_t>,
        output.numel() * kWarp,
        input_c.data_ptr<scalar_t>(),
        rois_c.data_ptr<scalar_t>(),
        ClassArgs<acc_t>{static_cast<acc_t>(spatial_scale), N, C1, H, W, k, m, sampling_ratio, aligned},
        output.data_ptr<scalar_t>());
  });
  return output;
}

} // namespace instfcn_d2
