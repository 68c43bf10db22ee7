// CPU kernel of instfcn_d2::ps_roi_class_logits (semantics: ps_roi_class_logits.h).
//
// One task per (class c, RoI r), RoIs varying fastest (as ps_roi_assemble's forward: consecutive
// tasks read the same 2*k*k input planes of class c). A task assembles the RoI's m x m inside and
// outside bins of class c with ps_roi_assemble's tap tables (ps_roi_assemble_cpu_tables.h) and its
// bin expression (the same values bit for bit), and adds up their maxima as it goes.
#include "ps_roi_class_logits/ps_roi_class_logits.h"
#include "ps_roi_assemble/ps_roi_assemble_cpu_tables.h"
#include "common/sampling.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace instfcn_d2 {
namespace {

// Sizes of one call: N images of 2 * C1 * k * k planes of H x W; m x m bins per RoI.
struct Sizes {
  int64_t C1, k, m, H, W;
};

// One (RoI, class c): the sum over its m x m cells of max(inside, outside), TY x TX taps per bin
// (0: the RoI's own counts). Each bin is cpu::ForwardBins' (ps_roi_assemble's) expression for its
// channel, evaluated in the same order (the same value bit for bit); the inside and outside bins
// of a cell are assembled together, sharing their taps and weights. in_n: the input of the RoI's
// image; cell[p] = grid_cell(p, k, m).
template <typename T, int TY, int TX>
struct ClassBins {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>; // double for float32 and float64

  static acc_t run(
      const T* in_n,
      int64_t c,
      int64_t C1,
      const cpu::RoiTable<T>& t,
      const int64_t* cell,
      int64_t k,
      int64_t m,
      int64_t H,
      int64_t W) {
    const int64_t ty = TY > 0 ? TY : t.y.taps, tx = TX > 0 ? TX : t.x.taps;
    const int64_t HW = H * W;
    const T count = t.count;
    const int64_t inside = inside_channel(c), outside = outside_channel(c, C1);
    acc_t sum = 0;
    for (int64_t ph = 0; ph < m; ++ph) {
      const T* wy = t.y.w.data() + ph * ty;
      const T* in_row = in_n + t.y.start[ph] * W;
      for (int64_t pw = 0; pw < m; ++pw) {
        const T* wx = t.x.w.data() + pw * tx;
        const T* bin = in_row + t.x.start[pw];
        const T* base_in = bin + cell_channel(inside, cell[ph], cell[pw], k) * HW;
        const T* base_out = bin + cell_channel(outside, cell[ph], cell[pw], k) * HW;
        T acc_in = 0, acc_out = 0;
        for (int64_t a = 0; a < ty; ++a) {
          const T* row_in = base_in + a * W;
          const T* row_out = base_out + a * W;
          T s_in = 0, s_out = 0;
          for (int64_t b = 0; b < tx; ++b) {
            s_in += wx[b] * row_in[b];
            s_out += wx[b] * row_out[b];
          }
          acc_in += wy[a] * s_in;
          acc_out += wy[a] * s_out;
        }
        sum += static_cast<acc_t>(inside_outside_max(acc_in / count, acc_out / count));
      }
    }
    return sum;
  }
};

template <typename T>
void class_logits_impl(const T* input, const std::vector<cpu::RoiTable<T>>& tables, const Sizes& s, T* output) {
  using acc_t = typename ClassBins<T, 0, 0>::acc_t;
  const int64_t R = static_cast<int64_t>(tables.size());
  const int64_t C1 = s.C1, k = s.k, m = s.m, H = s.H, W = s.W, mm = m * m;
  const int64_t Cin = 2 * C1 * k * k, HW = H * W;
  std::vector<int64_t> cell(m);
  for (int64_t p = 0; p < m; ++p) {
    cell[p] = grid_cell(p, k, m);
  }
  std::vector<decltype(&ClassBins<T, 0, 0>::run)> fns(R);
  for (int64_t r = 0; r < R; ++r) {
    fns[r] = cpu::pick_bins<ClassBins, T>(tables[r].y.taps, tables[r].x.taps);
  }
  const int64_t grain = std::max<int64_t>(1, 1024 / mm);
  at::parallel_for(0, C1 * R, grain, [&](int64_t begin, int64_t end) {
    for (int64_t cr = begin; cr < end; ++cr) {
      const int64_t c = cr / R, r = cr % R;
      const cpu::RoiTable<T>& t = tables[r];
      if (t.y.taps == 0 || t.x.taps == 0) {
        output[r * C1 + c] = static_cast<T>(0); // no sample inside the map: every bin is 0
        continue;
      }
      const acc_t sum = fns[r](input + t.batch * Cin * HW, c, C1, t, cell.data(), k, m, H, W);
      output[r * C1 + c] = static_cast<T>(sum / static_cast<acc_t>(mm));
    }
  });
}

} // namespace

at::Tensor ps_roi_class_logits_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned,
    int64_t num_classes) {
  ps_roi_class_logits_check(input, rois, output_size, group_size, num_classes);
  TORCH_CHECK(input.device().is_cpu(), "ps_roi_class_logits_cpu: input must be a CPU tensor");
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = output_size, C1 = num_classes + 1, R = rois.size(0);
  at::Tensor output = at::empty({R, C1}, input.options());
  if (R == 0) {
    return output;
  }
  if (input.numel() == 0) { // N, H or W == 0: all bins 0, as ps_roi_assemble's
    return output.zero_();
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ps_roi_class_logits_cpu", [&] {
    const auto tables = cpu::build_tables<scalar_t>(
        rois_c.data_ptr<scalar_t>(), R, N, spatial_scale, m, sampling_ratio, aligned, H, W, "ps_roi_class_logits");
    class_logits_impl<scalar_t>(input_c.data_ptr<scalar_t>(), tables, Sizes{C1, k, m, H, W}, output.data_ptr<scalar_t>());
  });
  return output;
}

} // namespace instfcn_d2
