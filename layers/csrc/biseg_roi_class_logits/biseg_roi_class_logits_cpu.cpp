// CPU kernel of instfcn_d2::biseg_roi_class_logits (semantics: biseg_roi_class_logits.h).
//
// One task per (class c, RoI r), RoIs varying fastest (consecutive tasks read the same planes of
// class c). A task assembles only its own planes into a few buffers of one RoI and class: the
// inside and outside bins of the coarse set (M/2 x M/2 when fused), of the fine set and the prior
// (M x M), with ps_roi_assemble's tap-table bins (ps_roi_assemble_cpu_tables.h: the same values
// bit for bit), then walks the M x M cells: upsampling, sum, prior, max, running sum. The buffers
// (5 planes of at most M x M) replace the (R, 2, C+1, M, M) tensors of the tensor path, which
// at R = 600, C = 80, M = 42 are 686 MB each.
#include "biseg_roi_class_logits/biseg_roi_class_logits.h"
#include "common/sampling.h"
#include "ps_roi_assemble/ps_roi_assemble_cpu_tables.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace instfcn_d2 {
namespace {

template <typename T>
using BinsFn = decltype(&cpu::ForwardBins<T, 0, 0>::run);

// One map set read per RoI: its data, sizes, grid and tables (one per RoI), and the bins of each
// table (compile-time tap counts where they are small).
template <typename T>
struct MapSet {
  const T* data = nullptr;
  int64_t channels = 0, H = 0, W = 0, k = 1, m = 1;
  std::vector<int64_t> cell; // grid_cell(p, k, m)
  std::vector<cpu::RoiTable<T>> tables;
  std::vector<BinsFn<T>> bins;

  void build(const at::Tensor& maps, const T* rois, int64_t R, double scale, int64_t group, int64_t out,
             int64_t sampling_ratio, bool aligned) {
    data = maps.data_ptr<T>();
    channels = maps.size(1), H = maps.size(2), W = maps.size(3), k = group, m = out;
    cell.resize(m);
    for (int64_t p = 0; p < m; ++p) {
      cell[p] = grid_cell(p, k, m);
    }
    tables = cpu::build_tables<T>(rois, R, maps.size(0), scale, m, sampling_ratio, aligned, H, W, "biseg_roi_class_logits");
    bins.resize(R);
    for (int64_t r = 0; r < R; ++r) {
      bins[r] = cpu::pick_bins<cpu::ForwardBins, T>(tables[r].y.taps, tables[r].x.taps);
    }
  }

  // The m x m bins of RoI r's output channel c into out.
  void assemble(int64_t r, int64_t c, T* out) const {
    const cpu::RoiTable<T>& t = tables[r];
    bins[r](data + t.batch * channels * H * W, c, t, cell.data(), k, m, H, W, out);
  }
};

template <typename T>
void class_logits_impl(
    const MapSet<T>& coarse,
    const MapSet<T>* fine,
    const MapSet<T>* prior,
    int64_t R,
    int64_t C1,
    int64_t M,
    int64_t prior_mode,
    T eps,
    T* output) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>; // double for float32 and float64
  const int64_t h = coarse.m, MM = M * M;
  std::vector<UpsampleTap<T>> up(fine ? M : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(up.size()); ++i) {
    up[i] = upsample2x_tap<T>(i, h);
  }
  const int64_t grain = std::max<int64_t>(1, 256 / MM);
  at::parallel_for(0, C1 * R, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> c_in(h * h), c_out(h * h), f_in(fine ? MM : 0), f_out(fine ? MM : 0), p(prior ? MM : 0);
    for (int64_t cr = begin; cr < end; ++cr) {
      const int64_t c = cr / R, r = cr % R;
      coarse.assemble(r, inside_channel(c), c_in.data());
      coarse.assemble(r, outside_channel(c, C1), c_out.data());
      if (fine) {
        fine->assemble(r, inside_channel(c), f_in.data());
        fine->assemble(r, outside_channel(c, C1), f_out.data());
      }
      if (prior) {
        prior->assemble(r, c, p.data());
      }
      acc_t sum = 0;
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < M; ++j) {
          const int64_t q = i * M + j;
          T in, out;
          if (fine) {
            in = upsample2x_at<T>(c_in.data(), h, up[i], up[j]) + f_in[q];
            out = upsample2x_at<T>(c_out.data(), h, up[i], up[j]) + f_out[q];
          } else {
            in = c_in[q];
            out = c_out[q];
          }
          if (prior) {
            in = apply_prior<T>(in, p[q], prior_mode, eps);
          }
          sum += static_cast<acc_t>(inside_outside_max(in, out));
        }
      }
      output[r * C1 + c] = static_cast<T>(sum / static_cast<acc_t>(MM));
    }
  });
}

} // namespace

at::Tensor biseg_roi_class_logits_cpu(
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
  TORCH_CHECK(coarse.device().is_cpu(), "biseg_roi_class_logits_cpu: coarse must be a CPU tensor");
  const int64_t C1 = num_classes + 1, R = rois.size(0), M = mask_size;
  at::Tensor output = at::empty({R, C1}, coarse.options());
  if (R == 0) {
    return output;
  }
  // (a map of height or width 0 gives RoIs no taps: their bins are 0, as ps_roi_assemble's)
  const at::Tensor coarse_c = coarse.contiguous();
  const at::Tensor fine_c = fine ? fine->contiguous() : at::Tensor();
  const at::Tensor prior_c = prior ? prior->contiguous() : at::Tensor();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(coarse.scalar_type(), "biseg_roi_class_logits_cpu", [&] {
    const scalar_t* r = rois_c.data_ptr<scalar_t>();
    MapSet<scalar_t> coarse_set, fine_set, prior_set;
    coarse_set.build(coarse_c, r, R, spatial_scale, group_size, fine ? M / 2 : M, sampling_ratio, aligned);
    if (fine) {
      fine_set.build(fine_c, r, R, fine_spatial_scale, fine_group_size, M, sampling_ratio, aligned);
    }
    if (prior) { // cropped as crop_roi_prior: k = 1, always aligned
      prior_set.build(prior_c, r, R, spatial_scale, 1, M, sampling_ratio, true);
    }
    class_logits_impl<scalar_t>(
        coarse_set, fine ? &fine_set : nullptr, prior ? &prior_set : nullptr, R, C1, M, prior_mode,
        static_cast<scalar_t>(eps), output.data_ptr<scalar_t>());
  });
  return output;
}

} // namespace instfcn_d2
