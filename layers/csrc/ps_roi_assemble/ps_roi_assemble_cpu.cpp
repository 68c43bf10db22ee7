// CPU kernels of instfcn_d2::ps_roi_assemble (semantics: ps_roi_assemble.h).
//
// Speed comes from separability: a bin's bilinear average over its sample grid is
//   sum_{rows a} wy[a] * sum_{cols b} wx[b] * plane[a, b]
// where wy depends only on (RoI, ph) and wx only on (RoI, pw). These per-axis taps are built
// once per RoI (duplicate rows of neighbouring samples merged) and reused by all C output
// channels, instead of recomputing coordinates and four corner weights per sample per channel.
// Every bin of a RoI gets the same number of taps per axis (zero-padded), so the inner loops
// have a trip count fixed per RoI; the common small counts (1..4) are compile-time constants.
//
// The arithmetic (RoI geometry, sample coordinates and counts, bilinear taps, the
// position-sensitive channel of a bin) is in ../common/sampling.h, shared with the CUDA kernels;
// this file holds only the tap tables, the loops and the parallelisation. The tables sum a bin's
// samples per axis first (wy * (wx * v) summed by rows), the CUDA kernels corner by corner.
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "common/sampling.h"

#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace instfcn_d2 {
namespace {

// Taps of the m bins of one RoI along one axis: bin p reads the `taps` consecutive rows (or
// columns) start[p] .. start[p] + taps - 1 with weights w[p * taps ..] (sums over the bin's
// samples, not yet divided by the sample count; zero where a bin needs fewer taps).
template <typename T>
struct AxisTaps {
  int64_t taps = 0;
  std::vector<int64_t> start;
  std::vector<T> w;

  void build(T origin, T bin, int64_t grid, int64_t size, int64_t m) {
    std::vector<int64_t> first(m, 0), count(m, 0);
    std::vector<AxisTap<T>> samples; // the bin's samples on the map, in sample order
    samples.reserve(static_cast<size_t>(std::max<int64_t>(grid, 0)));
    std::vector<std::vector<T>> acc(m);
    for (int64_t p = 0; p < m; ++p) {
      int64_t tmin = std::numeric_limits<int64_t>::max(), tmax = -1;
      samples.clear();
      for_each_axis_sample(origin, p, bin, grid, size, [&](const AxisTap<T>& t) {
        samples.push_back(t);
        tmin = std::min(tmin, t.lo);
        tmax = std::max(tmax, t.hi);
      });
      if (tmax < 0) {
        continue; // no valid sample: the bin is 0
      }
      std::vector<T>& a = acc[p];
      a.assign(tmax - tmin + 1, static_cast<T>(0));
      for (const AxisTap<T>& t : samples) {
        a[t.lo - tmin] += t.wlo;
        a[t.hi - tmin] += t.whi;
      }
      // Samples on exact integer coordinates leave zero-weight end taps: drop them.
      int64_t b = 0, e = static_cast<int64_t>(a.size());
      while (b < e && a[b] == 0) ++b;
      while (e > b && a[e - 1] == 0) --e;
      a = std::vector<T>(a.begin() + b, a.begin() + e);
      first[p] = tmin + b;
      count[p] = e - b;
      taps = std::max(taps, count[p]);
    }
    // Pad every bin to `taps` taps, shifting the start left where the padding would leave
    // the map (taps <= size, since all taps lie inside it).
    start.assign(m, 0);
    w.assign(m * taps, static_cast<T>(0));
    for (int64_t p = 0; p < m; ++p) {
      if (count[p] == 0) {
        continue;
      }
      start[p] = std::min(first[p], size - taps);
      std::copy(acc[p].begin(), acc[p].end(), w.begin() + p * taps + (first[p] - start[p]));
    }
  }
};

template <typename T>
struct RoiTable {
  int64_t batch = 0;
  T count = 1; // samples per bin, max(grid_h * grid_w, 1)
  AxisTaps<T> y, x;
};

template <typename T>
std::vector<RoiTable<T>> build_tables(
    const T* rois,
    int64_t R,
    int64_t N,
    double spatial_scale,
    int64_t m,
    int64_t sampling_ratio,
    bool aligned,
    int64_t H,
    int64_t W) {
  for (int64_t r = 0; r < R; ++r) {
    const T b = rois[r * 5];
    TORCH_CHECK(
        roi_batch_index(b, N) >= 0 && static_cast<T>(static_cast<int64_t>(b)) == b,
        "ps_roi_assemble: rois[",
        r,
        ", 0] = ",
        b,
        " is not a batch index in [0, ",
        N,
        ")");
  }
  std::vector<RoiTable<T>> tables(R);
  const T scale = static_cast<T>(spatial_scale);
  at::parallel_for(0, R, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* roi = rois + r * 5;
      RoiTable<T>& t = tables[r];
      const RoiBins<T> g = roi_bins<T>(roi, scale, m, sampling_ratio, aligned);
      t.batch = roi_batch_index(roi[0], N);
      t.count = g.count;
      t.y.build(g.y1, g.bin_h, g.grid_h, H, m);
      t.x.build(g.x1, g.bin_w, g.grid_w, W, m);
    }
  });
  return tables;
}

// One (RoI, output channel c): the m x m bins, TY x TX taps each (0: the RoI's own counts).
// in_n: the input of the RoI's image; cell[p] = grid_cell(p, k, m).
template <typename T, int TY, int TX>
struct ForwardBins {
  static void run(
      const T* in_n,
      int64_t c,
      const RoiTable<T>& t,
      const int64_t* cell,
      int64_t k,
      int64_t m,
      int64_t H,
      int64_t W,
      T* out) {
    const int64_t ty = TY > 0 ? TY : t.y.taps, tx = TX > 0 ? TX : t.x.taps;
    const int64_t HW = H * W;
    const T count = t.count; // a local: stores to `out` (also T) cannot change it
    for (int64_t ph = 0; ph < m; ++ph) {
      const T* wy = t.y.w.data() + ph * ty;
      const T* in_row = in_n + t.y.start[ph] * W;
      for (int64_t pw = 0; pw < m; ++pw) {
        const T* wx = t.x.w.data() + pw * tx;
        const T* base = in_row + cell_channel(c, cell[ph], cell[pw], k) * HW + t.x.start[pw];
        T acc = 0;
        for (int64_t a = 0; a < ty; ++a) {
          const T* row = base + a * W;
          T s = 0;
          for (int64_t b = 0; b < tx; ++b) {
            s += wx[b] * row[b];
          }
          acc += wy[a] * s;
        }
        out[ph * m + pw] = acc / count;
      }
    }
  }
};

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

// Bins<T, ty, tx>::run with compile-time tap counts for 1..4 x 1..4, else Bins<T, 0, 0>::run
// (runtime counts).
template <template <typename, int, int> class Bins, typename T>
auto pick_bins(int64_t ty, int64_t tx) -> decltype(&Bins<T, 0, 0>::run) {
#define INSTFCN_TAPS_CASE(TY, TX) \
  case (TY) * 8 + (TX):           \
    return &Bins<T, TY, TX>::run
#define INSTFCN_TAPS_ROW(TY) \
  INSTFCN_TAPS_CASE(TY, 1);  \
  INSTFCN_TAPS_CASE(TY, 2);  \
  INSTFCN_TAPS_CASE(TY, 3);  \
  INSTFCN_TAPS_CASE(TY, 4)
  if (ty <= 4 && tx <= 4) {
    switch (ty * 8 + tx) {
      INSTFCN_TAPS_ROW(1);
      INSTFCN_TAPS_ROW(2);
      INSTFCN_TAPS_ROW(3);
      INSTFCN_TAPS_ROW(4);
      default:
        break;
    }
  }
#undef INSTFCN_TAPS_ROW
#undef INSTFCN_TAPS_CASE
  return &Bins<T, 0, 0>::run;
}

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
