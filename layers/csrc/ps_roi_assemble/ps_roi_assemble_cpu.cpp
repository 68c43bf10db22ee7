// CPU kernels of instfcn_d2::ps_roi_assemble (semantics: ps_roi_assemble.h).
//
// The per-RoI tap tables that make them fast (a bin's samples added up one axis first) are in
// ps_roi_assemble_cpu_tables.h, shared with ps_roi_class_logits' CPU kernel. The arithmetic (RoI
// geometry, sample coordinates and counts, bilinear taps, the position-sensitive channel of a
// bin) is in ../common/sampling.h, shared with the CUDA kernels; this file holds only the loops
// and the parallelisation. The tables sum a bin's samples per axis first (wy * (wx * v) summed
// by rows), the CUDA kernels corner by corner.
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "ps_roi_assemble/ps_roi_assemble_cpu_tables.h"
#include "common/sampling.h"

#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

namespace instfcn_d2 {
namespace {

using cpu::RoiTable;
using cpu::build_tables;
using cpu::ForwardBins;
using cpu::pick_bins;

// Scatter of the bins rows x cols of one (RoI, output channel) gradient `g` into one input
// plane, TY x TX taps per bin (0: the RoI's own counts).
template <typename T, int TY, int TX>
struct BackwardBins {
  static void run(const T* g, const RoiTable<T>& t, Span rows, Span cols, int64_t m, int64_t W, T* gplane) {
    const int64_t ty = TY > 0 ? TY : t.y.taps, tx = TX > 0 ? TX : t.x.taps;
    for (int64_t ph = rows.begin; ph < rows.end; ++ph) {
      const T* wy = t.y.w.data() + ph * ty;
      T* grow = gplane + t.y.start[ph] * W;
      for (int64_t pw = cols.begin; pw < cols.end; ++pw) {
        const T gv = g[ph * m + pw] / t.count;
        const T* wx = t.x.w.data() + pw * tx;
        T* base = grow + t.x.start[pw];
        for (int64_t a = 0; a < ty; ++a) {
          const T ga = gv * wy[a];
          T* row = base + a * W;
          for (int64_t b = 0; b < tx; ++b) {
            row[b] += ga * wx[b];
          }
        }
      }
    }
  }
};

// Sizes of one call: N images of C * k * k planes of H x W; m x m bins per RoI.
struct Sizes {
  int64_t N, C, k, m, H, W;
};

template <typename T>
void forward_impl(const T* input, const std::vector<RoiTable<T>>& tables, const Sizes& s, T* output) {
  const int64_t R = static_cast<int64_t>(tables.size());
  const int64_t C = s.C, k = s.k, m = s.m, H = s.H, W = s.W, HW = H * W, Cin = C * k * k;
  std::vector<int64_t> cell(m);
  for (int64_t p = 0; p < m; ++p) {
    cell[p] = grid_cell(p, k, m);
  }
  std::vector<decltype(&ForwardBins<T, 0, 0>::run)> fns(R);
  for (int64_t r = 0; r < R; ++r) {
    fns[r] = pick_bins<ForwardBins, T>(tables[r].y.taps, tables[r].x.taps);
  }
  const int64_t grain = std::max<int64_t>(1, 2048 / (m * m));
  // RoIs vary fastest: consecutive tasks read the same k*k input planes of channel c (a few
  // hundred KB, cache resident) for every RoI, instead of sweeping all k*k*C planes per RoI.
  at::parallel_for(0, C * R, grain, [&](int64_t begin, int64_t end) {
    for (int64_t cr = begin; cr < end; ++cr) {
      const int64_t c = cr / R, r = cr % R;
      const RoiTable<T>& t = tables[r];
      T* out = output + (r * C + c) * m * m;
      if (t.y.taps == 0 || t.x.taps == 0) {
        std::fill(out, out + m * m, static_cast<T>(0)); // no sample inside the map
        continue;
      }
      fns[r](input + t.batch * Cin * HW, c, t, cell.data(), k, m, H, W, out);
    }
  });
}

template <typename T>
void backward_impl(const T* grad, const std::vector<RoiTable<T>>& tables, const Sizes& s, T* grad_input) {
  const int64_t R = static_cast<int64_t>(tables.size());
  const int64_t N = s.N, C = s.C, k = s.k, m = s.m, W = s.W, HW = s.H * W, Cin = C * k * k;
  std::vector<std::vector<int64_t>> rois_of(N);
  for (int64_t r = 0; r < R; ++r) {
    rois_of[tables[r].batch].push_back(r);
  }
  std::vector<decltype(&BackwardBins<T, 0, 0>::run)> bfns(R);
  for (int64_t r = 0; r < R; ++r) {
    bfns[r] = pick_bins<BackwardBins, T>(tables[r].y.taps, tables[r].x.taps);
  }
  // One task per input plane (n, c_in): the plane's gradient comes only from output channel
  // c_in / (k*k), grid cell c_in % (k*k), of the RoIs of image n; no two tasks write the
  // same memory, so no atomics and a deterministic sum order.
  at::parallel_for(0, N * Cin, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / Cin;
      const CellOfChannel cell = split_cell_channel(plane % Cin, k);
      const Span rows = cell_span(cell.gi, k, m), cols = cell_span(cell.gj, k, m);
      T* gplane = grad_input + plane * HW;
      for (const int64_t r : rois_of[n]) {
        bfns[r](grad + (r * C + cell.c) * m * m, tables[r], rows, cols, m, W, gplane);
      }
    }
  });
}

} // namespace

at::Tensor ps_roi_assemble_forward_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t output_size,
    int64_t group_size,
    int64_t sampling_ratio,
    bool aligned) {
  ps_roi_assemble_check_forward(input, rois, output_size, group_size);
  TORCH_CHECK(input.device().is_cpu(), "ps_roi_assemble_forward_cpu: input must be a CPU tensor");
  const int64_t N = input.size(0), Cin = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = output_size, C = Cin / (k * k), R = rois.size(0);
  at::Tensor output = at::empty({R, C, m, m}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  if (input.numel() == 0) { // H == 0 or W == 0 (N == 0 fails the batch-index check)
    return output.zero_();
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ps_roi_assemble_forward_cpu", [&] {
    const auto tables =
        build_tables<scalar_t>(rois_c.data_ptr<scalar_t>(), R, N, spatial_scale, m, sampling_ratio, aligned, H, W);
    forward_impl<scalar_t>(input_c.data_ptr<scalar_t>(), tables, Sizes{N, C, k, m, H, W}, output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor ps_roi_assemble_backward_cpu(
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
  TORCH_CHECK(grad.device().is_cpu(), "ps_roi_assemble_backward_cpu: grad must be a CPU tensor");
  const int64_t k = group_size, m = output_size, C = channels / (k * k), R = rois.size(0);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (R == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ps_roi_assemble_backward_cpu", [&] {
    const auto tables = build_tables<scalar_t>(
        rois_c.data_ptr<scalar_t>(), R, batch_size, spatial_scale, m, sampling_ratio, aligned, height, width);
    backward_impl<scalar_t>(
        grad_c.data_ptr<scalar_t>(),
        tables,
        Sizes{batch_size, C, k, m, height, width},
        grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

} // namespace instfcn_d2
