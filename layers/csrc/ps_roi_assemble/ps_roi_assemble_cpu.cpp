// CPU kernels of instfcn_d2::ps_roi_assemble (semantics: ps_roi_assemble.h).
//
// Speed comes from separability: a bin's bilinear average over its sample grid is
//   sum_{rows a} wy[a] * sum_{cols b} wx[b] * plane[a, b]
// where wy depends only on (RoI, ph) and wx only on (RoI, pw). These per-axis taps are built
// once per RoI (duplicate rows of neighbouring samples merged) and reused by all C output
// channels, instead of recomputing coordinates and four corner weights per sample per channel.
// Every bin of a RoI gets the same number of taps per axis (zero-padded), so the inner loops
// have a trip count fixed per RoI; the common small counts (1..4) are compile-time constants.
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "ps_roi_assemble/bilinear.h"

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
    const size_t g = static_cast<size_t>(std::max<int64_t>(grid, 0));
    std::vector<int64_t> lo(g), hi(g), first(m, 0), count(m, 0);
    std::vector<T> wlo(g), whi(g);
    std::vector<char> valid(g);
    std::vector<std::vector<T>> acc(m);
    for (int64_t p = 0; p < m; ++p) {
      int64_t tmin = std::numeric_limits<int64_t>::max(), tmax = -1;
      for (int64_t i = 0; i < grid; ++i) {
        // Same expression (and rounding) as torchvision's roi_align / ps_roi_align.
        const T c = origin + static_cast<T>(p) * bin + static_cast<T>(i + .5f) * bin / static_cast<T>(grid);
        valid[i] = axis_bilinear(c, size, lo[i], hi[i], wlo[i], whi[i]);
        if (valid[i]) {
          tmin = std::min(tmin, lo[i]);
          tmax = std::max(tmax, hi[i]);
        }
      }
      if (tmax < 0) {
        continue; // no valid sample: the bin is 0
      }
      std::vector<T>& a = acc[p];
      a.assign(tmax - tmin + 1, static_cast<T>(0));
      for (int64_t i = 0; i < grid; ++i) {
        if (valid[i]) {
          a[lo[i] - tmin] += wlo[i];
          a[hi[i] - tmin] += whi[i];
        }
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
        b >= 0 && b < static_cast<T>(N) && static_cast<T>(static_cast<int64_t>(b)) == b,
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
  const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0.0);
  at::parallel_for(0, R, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* roi = rois + r * 5;
      RoiTable<T>& t = tables[r];
      t.batch = static_cast<int64_t>(roi[0]);
      const T x1 = roi[1] * scale - offset;
      const T y1 = roi[2] * scale - offset;
      const T x2 = roi[3] * scale - offset;
      const T y2 = roi[4] * scale - offset;
      T roi_w = x2 - x1;
      T roi_h = y2 - y1;
      if (!aligned) {
        roi_w = std::max(roi_w, static_cast<T>(1.));
        roi_h = std::max(roi_h, static_cast<T>(1.));
      }
      const T bin_h = roi_h / static_cast<T>(m);
      const T bin_w = roi_w / static_cast<T>(m);
      const int64_t grid_h = samples_per_bin_side(roi_h, m, sampling_ratio);
      const int64_t grid_w = samples_per_bin_side(roi_w, m, sampling_ratio);
      t.count = static_cast<T>(std::max<int64_t>(grid_h * grid_w, 1));
      t.y.build(y1, bin_h, grid_h, H, m);
      t.x.build(x1, bin_w, grid_w, W, m);
    }
  });
  return tables;
}

// First bin of each grid cell along an axis: bins [cell_start[g], cell_start[g + 1]) have
// floor(p * k / m) == g.
std::vector<int64_t> cell_starts(int64_t k, int64_t m) {
  std::vector<int64_t> s(k + 1);
  for (int64_t g = 0; g <= k; ++g) {
    s[g] = (g * m + k - 1) / k;
  }
  return s;
}

// One (RoI, output channel): the m x m bins, TY x TX taps each (0: the RoI's own counts).
template <typename T, int TY, int TX>
void forward_bins(const T* in_c, const RoiTable<T>& t, const int64_t* cell, int64_t k, int64_t m, int64_t H, int64_t W, T* out) {
  const int64_t ty = TY > 0 ? TY : t.y.taps, tx = TX > 0 ? TX : t.x.taps;
  const int64_t HW = H * W;
  const T count = t.count; // a local: stores to `out` (also T) cannot change it
  for (int64_t ph = 0; ph < m; ++ph) {
    const T* wy = t.y.w.data() + ph * ty;
    const T* in_row = in_c + cell[ph] * k * HW + t.y.start[ph] * W;
    for (int64_t pw = 0; pw < m; ++pw) {
      const T* wx = t.x.w.data() + pw * tx;
      const T* base = in_row + cell[pw] * HW + t.x.start[pw];
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

// Calls F<TY, TX> with compile-time tap counts for 1..4 x 1..4, else F<0, 0> (runtime counts).
#define INSTFCN_TAPS_CASE(TY, TX) \
  case (TY) * 8 + (TX):           \
    return F<T, TY, TX>
#define INSTFCN_TAPS_ROW(TY) \
  INSTFCN_TAPS_CASE(TY, 1);  \
  INSTFCN_TAPS_CASE(TY, 2);  \
  INSTFCN_TAPS_CASE(TY, 3);  \
  INSTFCN_TAPS_CASE(TY, 4)

template <typename T>
using ForwardFn = void (*)(const T*, const RoiTable<T>&, const int64_t*, int64_t, int64_t, int64_t, int64_t, T*);

template <typename T>
ForwardFn<T> pick_forward(int64_t ty, int64_t tx) {
#define F forward_bins
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
  return F<T, 0, 0>;
#undef F
}

template <typename T>
void forward_impl(
    const T* input,
    const std::vector<RoiTable<T>>& tables,
    int64_t C,
    int64_t k,
    int64_t m,
    int64_t H,
    int64_t W,
    T* output) {
  const int64_t R = static_cast<int64_t>(tables.size());
  const int64_t HW = H * W;
  const int64_t Cin = C * k * k;
  std::vector<int64_t> cell(m);
  for (int64_t p = 0; p < m; ++p) {
    cell[p] = p * k / m;
  }
  std::vector<ForwardFn<T>> fns(R);
  for (int64_t r = 0; r < R; ++r) {
    fns[r] = pick_forward<T>(tables[r].y.taps, tables[r].x.taps);
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
      fns[r](input + (t.batch * Cin + c * k * k) * HW, t, cell.data(), k, m, H, W, out);
    }
  });
}

// Scatter of the bins [ph0, ph1) x [pw0, pw1) of one (RoI, output channel) gradient `g` into
// one input plane, TY x TX taps per bin (0: the RoI's own counts).
template <typename T, int TY, int TX>
void backward_bins(
    const T* g,
    const RoiTable<T>& t,
    int64_t ph0,
    int64_t ph1,
    int64_t pw0,
    int64_t pw1,
    int64_t m,
    int64_t W,
    T* gplane) {
  const int64_t ty = TY > 0 ? TY : t.y.taps, tx = TX > 0 ? TX : t.x.taps;
  for (int64_t ph = ph0; ph < ph1; ++ph) {
    const T* wy = t.y.w.data() + ph * ty;
    T* grow = gplane + t.y.start[ph] * W;
    for (int64_t pw = pw0; pw < pw1; ++pw) {
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

template <typename T>
using BackwardFn =
    void (*)(const T*, const RoiTable<T>&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, T*);

template <typename T>
BackwardFn<T> pick_backward(int64_t ty, int64_t tx) {
#define F backward_bins
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
  return F<T, 0, 0>;
#undef F
}

template <typename T>
void backward_impl(
    const T* grad,
    const std::vector<RoiTable<T>>& tables,
    int64_t N,
    int64_t C,
    int64_t k,
    int64_t m,
    int64_t H,
    int64_t W,
    T* grad_input) {
  const int64_t R = static_cast<int64_t>(tables.size());
  const int64_t HW = H * W;
  const int64_t Cin = C * k * k;
  std::vector<std::vector<int64_t>> rois_of(N);
  for (int64_t r = 0; r < R; ++r) {
    rois_of[tables[r].batch].push_back(r);
  }
  const std::vector<int64_t> start = cell_starts(k, m);
  std::vector<BackwardFn<T>> bfns(R);
  for (int64_t r = 0; r < R; ++r) {
    bfns[r] = pick_backward<T>(tables[r].y.taps, tables[r].x.taps);
  }
  // One task per input plane (n, c_in): the plane's gradient comes only from output channel
  // c_in / (k*k), grid cell c_in % (k*k), of the RoIs of image n; no two tasks write the
  // same memory, so no atomics and a deterministic sum order.
  at::parallel_for(0, N * Cin, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / Cin, cin = plane % Cin;
      const int64_t c = cin / (k * k), gi = (cin / k) % k, gj = cin % k;
      T* gplane = grad_input + plane * HW;
      for (const int64_t r : rois_of[n]) {
        const RoiTable<T>& t = tables[r];
        bfns[r](grad + (r * C + c) * m * m, t, start[gi], start[gi + 1], start[gj], start[gj + 1], m, W, gplane);
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
    forward_impl<scalar_t>(input_c.data_ptr<scalar_t>(), tables, C, k, m, H, W, output.data_ptr<scalar_t>());
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
        grad_c.data_ptr<scalar_t>(), tables, batch_size, C, k, m, height, width, grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

} // namespace instfcn_d2
