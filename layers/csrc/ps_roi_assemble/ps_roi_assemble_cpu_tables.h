// The CPU kernels' per-RoI tap tables (ps_roi_assemble_cpu.cpp, and ps_roi_class_logits_cpu.cpp,
// which assembles the same bins with them).
//
// Speed comes from separability: a bin's bilinear average over its sample grid is
//   sum_{rows a} wy[a] * sum_{cols b} wx[b] * plane[a, b]
// where wy depends only on (RoI, ph) and wx only on (RoI, pw). These per-axis taps are built
// once per RoI (duplicate rows of neighbouring samples merged) and reused by all C output
// channels, instead of recomputing coordinates and four corner weights per sample per channel.
// Every bin of a RoI gets the same number of taps per axis (zero-padded), so the inner loops
// have a trip count fixed per RoI; the common small counts (1..4) are compile-time constants.
// The taps, weights and counts come from ../common/sampling.h, shared with the CUDA kernels.
#pragma once

#include "common/sampling.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace instfcn_d2 {
namespace cpu {

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

// The tables of R RoIs (rows of 5) on N images of H x W planes, m x m bins each; a batch index not
// in [0, N) or not an integer is refused, naming `op`.
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
    int64_t W,
    const char* op = "ps_roi_assemble") {
  for (int64_t r = 0; r < R; ++r) {
    const T b = rois[r * 5];
    TORCH_CHECK(
        roi_batch_index(b, N) >= 0 && static_cast<T>(static_cast<int64_t>(b)) == b,
        op,
        ": rois[",
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

} // namespace cpu
} // namespace instfcn_d2
