// CUDA kernel of instfcn_d2::biseg_roi_class_logits (semantics: biseg_roi_class_logits.h).
//
// One warp per (RoI r, class c), its 32 lanes splitting the M x M cells, as ps_roi_class_logits'
// kernel: a lane computes its cell's bins with bin_average (../common/sampling.h, ps_roi_assemble's
// forward arithmetic), each rounded to the input's dtype as the tensor path stores it: the four
// coarse neighbours that the x2 upsampling reads (inside and outside), the fine bins and the
// prior's; then upsample2x_at, apply_prior and inside_outside_max (the same header), each result
// rounded again as torch stores it; a warp shuffle sums the lanes. A coarse bin is computed by
// up to four lanes instead of once: no shared buffer, no synchronisation, and at M = 42 a coarse
// bin is 1 to 4 samples.
#include "biseg_roi_class_logits/biseg_roi_class_logits.h"
#include "common/cuda_launch.cuh"
#include "common/sampling.h"

#include <c10/cuda/CUDAGuard.h>

namespace instfcn_d2 {
namespace {

constexpr int kWarp = 32;

template <typename scalar_t>
struct Planes {
  const scalar_t* data;
  int64_t H, W, k;
};

template <typename acc_t>
struct BiSegArgs {
  acc_t spatial_scale, fine_spatial_scale, eps;
  int64_t N, C1, M, sampling_ratio, prior_mode;
  bool aligned, fused, has_prior;
};

// The bin (ph, pw) of geometry g on the plane `plane`, stored in scalar_t as ps_roi_assemble does.
template <typename scalar_t, typename acc_t>
__device__ inline acc_t stored_bin(const RoiBins<acc_t>& g, int64_t ph, int64_t pw, const scalar_t* plane, int64_t H, int64_t W) {
  return static_cast<acc_t>(static_cast<scalar_t>(bin_average(g, ph, pw, plane, H, W)));
}

template <typename scalar_t, typename acc_t>
__device__ inline acc_t stored(acc_t v) {
  return static_cast<acc_t>(static_cast<scalar_t>(v));
}

// `total` = 32 * R * C1 threads (see ps_roi_class_logits_cuda.cu: whole warps hold one (r, c)).
template <typename scalar_t, typename acc_t>
__global__ void biseg_roi_class_logits_kernel(
    int64_t total,
    Planes<scalar_t> coarse,
    Planes<scalar_t> fine,
    Planes<scalar_t> prior,
    const scalar_t* __restrict__ rois,
    BiSegArgs<acc_t> a,
    scalar_t* __restrict__ output) {
  INSTFCN_CUDA_1D_LOOP(index, total) {
    const int64_t item = index / kWarp; // r * C1 + c
    const int64_t lane = index % kWarp;
    const int64_t c = item % a.C1, r = item / a.C1;
    const scalar_t* roi = rois + r * 5;
    const int64_t n = roi_batch_index(static_cast<acc_t>(roi[0]), a.N);
    const bool fused = a.fused;
    const int64_t M = a.M, h = fused ? M / 2 : M;
    acc_t sum = 0;
    if (n >= 0) {
      const RoiBins<acc_t> gc = roi_bins<acc_t>(roi, a.spatial_scale, h, a.sampling_ratio, a.aligned);
      const int64_t HWc = coarse.H * coarse.W;
      const scalar_t* coarse_n = coarse.data + n * 2 * a.C1 * coarse.k * coarse.k * HWc;
      for (int64_t p = lane; p < M * M; p += kWarp) {
        const int64_t ph = p / M, pw = p % M;
        acc_t in, out;
        if (fused) {
          const UpsampleTap<acc_t> ty = upsample2x_tap<acc_t>(ph, h), tx = upsample2x_tap<acc_t>(pw, h);
          acc_t cin[4], cout[4]; // the coarse bins (lo/hi row) x (lo/hi column), as a 2 x 2 plane
          for (int q = 0; q < 4; ++q) {
            const int64_t by = q < 2 ? ty.lo : ty.hi, bx = (q & 1) ? tx.hi : tx.lo;
            const int64_t gi = grid_cell(by, coarse.k, h), gj = grid_cell(bx, coarse.k, h);
            cin[q] = stored_bin<scalar_t>(gc, by, bx, coarse_n + cell_channel(inside_channel(c), gi, gj, coarse.k) * HWc,
                                          coarse.H, coarse.W);
            cout[q] = stored_bin<scalar_t>(gc, by, bx, coarse_n + cell_channel(outside_channel(c, a.C1), gi, gj, coarse.k) * HWc,
                                           coarse.H, coarse.W);
          }
          const UpsampleTap<acc_t> ly{0, 1, ty.wlo, ty.whi}, lx{0, 1, tx.wlo, tx.whi}; // on the 2 x 2 plane
          const RoiBins<acc_t> gf = roi_bins<acc_t>(roi, a.fine_spatial_scale, M, a.sampling_ratio, a.aligned);
          const int64_t HWf = fine.H * fine.W;
          const scalar_t* fine_n = fine.data + n * 2 * a.C1 * fine.k * fine.k * HWf;
          const int64_t fi = grid_cell(ph, fine.k, M), fj = grid_cell(pw, fine.k, M);
          const acc_t fin = stored_bin<scalar_t>(gf, ph, pw, fine_n + cell_channel(inside_channel(c), fi, fj, fine.k) * HWf,
                                                 fine.H, fine.W);
          const acc_t fout = stored_bin<scalar_t>(
              gf, ph, pw, fine_n + cell_channel(outside_channel(c, a.C1), fi, fj, fine.k) * HWf, fine.H, fine.W);
          in = stored<scalar_t>(stored<scalar_t>(upsample2x_at<acc_t>(cin, 2, ly, lx)) + fin);
          out = stored<scalar_t>(stored<scalar_t>(upsample2x_at<acc_t>(cout, 2, ly, lx)) + fout);
        } else {
          const int64_t gi = grid_cell(ph, coarse.k, M), gj = grid_cell(pw, coarse.k, M);
          in = stored_bin<scalar_t>(gc, ph, pw, coarse_n + cell_channel(inside_channel(c), gi, gj, coarse.k) * HWc,
                                    coarse.H, coarse.W);
          out = stored_bin<scalar_t>(gc, ph, pw, coarse_n + cell_channel(outside_channel(c, a.C1), gi, gj, coarse.k) * HWc,
                                     coarse.H, coarse.W);
        }
        if (a.has_prior) { // cropped as crop_roi_prior: k = 1, always aligned
          const RoiBins<acc_t> gp = roi_bins<acc_t>(roi, a.spatial_scale, M, a.sampling_ratio, true);
          const int64_t HWp = prior.H * prior.W;
          const acc_t pr = stored_bin<scalar_t>(gp, ph, pw, prior.data + (n * a.C1 + c) * HWp, prior.H, prior.W);
          in = stored<scalar_t>(apply_prior<acc_t>(in, pr, a.prior_mode, a.eps));
        }
        sum += inside_outside_max(in, out);
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      output[item] = static_cast<scalar_t>(sum / static_cast<acc_t>(a.M * a.M));
    }
  }
}

} // namespace

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
    double eps) {
  biseg_roi_class_logits_check(coarse, fine, prior, rois, group_size, fine_group_size, mask_size, num_classes, prior_mode);
  TORCH_CHECK(coarse.is_cuda(), "biseg_roi_class_logits_cuda: coarse must be a CUDA tensor");
  static_assert(kThreads % kWarp == 0, "a block must hold whole warps");
  const c10::cuda::CUDAGuard device_guard(coarse.device());
  const int64_t C1 = num_classes + 1, R = rois.size(0);
  at::Tensor output = at::empty({R, C1}, coarse.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor coarse_c = coarse.contiguous();
  const at::Tensor fine_c = fine ? fine->contiguous() : at::Tensor();
  const at::Tensor prior_c = prior ? prior->contiguous() : at::Tensor();
  const at::Tensor rois_c = rois.contiguous();
  INSTFCN_DISPATCH_CUDA_TYPES(coarse.scalar_type(), "biseg_roi_class_logits_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // an empty map (height or width 0) gives its bins no sample: 0, as ps_roi_assemble's
    const Planes<scalar_t> c_planes{coarse_c.data_ptr<scalar_t>(), coarse.size(2), coarse.size(3), group_size};
    const Planes<scalar_t> f_planes{fine ? fine_c.data_ptr<scalar_t>() : nullptr, fine ? fine->size(2) : 0,
                                    fine ? fine->size(3) : 0, fine_group_size};
    const Planes<scalar_t> p_planes{prior ? prior_c.data_ptr<scalar_t>() : nullptr, prior ? prior->size(2) : 0,
                                    prior ? prior->size(3) : 0, 1};
    launch_1d(
        biseg_roi_class_logits_kernel<scalar_t, acc_t>,
        output.numel() * kWarp,
        c_planes,
        f_planes,
        p_planes,
        rois_c.data_ptr<scalar_t>(),
        BiSegArgs<acc_t>{static_cast<acc_t>(spatial_scale), static_cast<acc_t>(fine_spatial_scale), static_cast<acc_t>(eps),
                         coarse.size(0), C1, mask_size, sampling_ratio, prior_mode, aligned, fine.has_value(),
                         prior.has_value()},
        output.data_ptr<scalar_t>());
  });
  return output;
}

} // namespace instfcn_d2
