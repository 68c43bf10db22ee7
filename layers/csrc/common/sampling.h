// The per-sample arithmetic of the assembling ops, shared by every CPU and CUDA kernel (forward
// and backward) so that the CPU tests exercise exactly the expressions the GPU evaluates: RoI /
// bin geometry, sample coordinates and counts, bilinear taps and corners, the position-sensitive
// channel of a grid cell, and the window position and clipping rules. Everything here is
// C10_HOST_DEVICE; the kernels keep only their loops over bins, RoIs and planes, their tap tables
// (CPU), their launch code and atomics (CUDA). An expression changed here changes every kernel at
// once: keep the operation order, on which the results depend bit for bit.
//
// The CPU forward / backward add a bin's samples up one axis at a time (per-RoI tap tables, see
// ps_roi_assemble_cpu.cpp), the CUDA kernels sample by sample through BilinearSample; the taps,
// weights and counts they add up come from the same functions here.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace instfcn_d2 {

// ---------------------------------------------------------------------------------------------
// Grid cells (both ops). An m-long axis of bins / window pixels is split into k grid cells.

// Grid cell of bin (or window pixel) p: floor(p * k / m).
C10_HOST_DEVICE inline int64_t grid_cell(int64_t p, int64_t k, int64_t m) {
  return p * k / m;
}

// First bin of grid cell g: bins [grid_cell_start(g), grid_cell_start(g + 1)) have grid_cell == g.
C10_HOST_DEVICE inline int64_t grid_cell_start(int64_t g, int64_t k, int64_t m) {
  return (g * m + k - 1) / k;
}

// Input channel that output channel c reads in grid cell (gi, gj): (c*k + gi)*k + gj, the
// R-FCN / FCIS / torchvision layout (window_assemble: c = 0).
C10_HOST_DEVICE inline int64_t cell_channel(int64_t c, int64_t gi, int64_t gj, int64_t k) {
  return (c * k + gi) * k + gj;
}

// The inverse of cell_channel: the output channel and grid cell of an input channel.
struct CellOfChannel {
  int64_t c, gi, gj;
};

C10_HOST_DEVICE inline CellOfChannel split_cell_channel(int64_t channel, int64_t k) {
  return {channel / (k * k), (channel / k) % k, channel % k};
}

C10_HOST_DEVICE inline bool in_range(int64_t i, int64_t size) {
  return i >= 0 && i < size;
}

// A half-open range [begin, end) of indices; empty when begin >= end.
struct Span {
  int64_t begin, end;
};

// The bins of grid cell g along an axis.
C10_HOST_DEVICE inline Span cell_span(int64_t g, int64_t k, int64_t m) {
  return {grid_cell_start(g, k, m), grid_cell_start(g + 1, k, m)};
}

// ---------------------------------------------------------------------------------------------
// ps_roi_assemble: RoI geometry and bilinear sampling (torchvision's roi_align / ps_roi_align).

// Most samples per bin side that adaptive sampling (sampling_ratio <= 0) takes. Adaptive
// sampling takes ceil(roi_size / m) per side, about one per pixel of the map, which grows without
// bound with the RoI (a 1e9-pixel RoI took tens of seconds and gigabytes). Beyond 64 the bin
// average is already a dense estimate (a sample every bin/64 pixels), and the models never reach
// the cap: a bin of 64 pixels of a stride-16 map with m = 21 is a 21504-pixel RoI. It bounds the
// work per bin at 64 x 64 samples. The pure-PyTorch reference uses the same constant.
constexpr int64_t kMaxAdaptiveSamples = 64;

// Samples per bin side along one axis: sampling_ratio when > 0, else
// min(ceil(roi_size / m), kMaxAdaptiveSamples) (<= 0 for an empty or inverted RoI: no sample).
template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_bin_side(T roi_size, int64_t m, int64_t sampling_ratio) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T g = ceil(roi_size / static_cast<T>(m));
  if (!(g < static_cast<T>(kMaxAdaptiveSamples))) { // also an infinite size
    return kMaxAdaptiveSamples;
  }
  return static_cast<int64_t>(g);
}

// RoI side length after the minimum-size rule: aligned == false clamps it to >= 1 (as
// std::max(size, 1)); aligned == true keeps it (an empty or inverted RoI then has no sample).
template <typename T>
C10_HOST_DEVICE inline T roi_side(T size, bool aligned) {
  return (!aligned && size < static_cast<T>(1.)) ? static_cast<T>(1.) : size;
}

// Batch index of a RoI from its first field b, or -1 when b is not in [0, N) (NaN included).
template <typename T>
C10_HOST_DEVICE inline int64_t roi_batch_index(T b, int64_t N) {
  return (b >= 0 && b < static_cast<T>(N)) ? static_cast<int64_t>(b) : -1;
}

// Geometry of one RoI split into m x m bins, in map coordinates.
template <typename T>
struct RoiBins {
  T y1, x1;         // top-left corner (after spatial_scale and the aligned half-pixel shift)
  T bin_h, bin_w;   // bin size
  int64_t grid_h, grid_w; // samples per bin side (<= 0: none)
  T count;          // the divisor of a bin's sum: max(grid_h * grid_w, 1)
};

// roi: the row (batch_index, x1, y1, x2, y2) in image coordinates, of any type convertible to
// T (the CUDA kernels read float16 / bfloat16 RoIs and compute in float).
template <typename T, typename R>
C10_HOST_DEVICE inline RoiBins<T>
roi_bins(const R* roi, T spatial_scale, int64_t m, int64_t sampling_ratio, bool aligned) {
  RoiBins<T> g;
  const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0.0);
  g.x1 = static_cast<T>(roi[1]) * spatial_scale - offset;
  g.y1 = static_cast<T>(roi[2]) * spatial_scale - offset;
  const T x2 = static_cast<T>(roi[3]) * spatial_scale - offset;
  const T y2 = static_cast<T>(roi[4]) * spatial_scale - offset;
  const T roi_w = roi_side(x2 - g.x1, aligned);
  const T roi_h = roi_side(y2 - g.y1, aligned);
  g.bin_h = roi_h / static_cast<T>(m);
  g.bin_w = roi_w / static_cast<T>(m);
  g.grid_h = samples_per_bin_side(roi_h, m, sampling_ratio);
  g.grid_w = samples_per_bin_side(roi_w, m, sampling_ratio);
  const int64_t samples = g.grid_h * g.grid_w;
  g.count = static_cast<T>(samples > 1 ? samples : int64_t(1));
  return g;
}

// Coordinate of sample i (of `grid`) along one axis of bin p: the same expression (and rounding)
// as torchvision's roi_align / ps_roi_align.
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T origin, int64_t p, T bin, int64_t i, int64_t grid) {
  return origin + static_cast<T>(p) * bin + static_cast<T>(i + .5f) * bin / static_cast<T>(grid);
}

// The two bilinear taps of a sample along one axis: rows (or columns) lo and hi, weights wlo, whi.
template <typename T>
struct AxisTap {
  int64_t lo, hi;
  T wlo, whi;
};

// torchvision's bilinear_interpolate along one axis. Returns false for a sample outside
// [-1, size] (it contributes 0); coordinates <= 0 clamp to 0, past the last pixel to it.
template <typename T>
C10_HOST_DEVICE inline bool axis_bilinear(T coord, int64_t size, AxisTap<T>& t) {
  if (coord < static_cast<T>(-1.0) || coord > static_cast<T>(size)) {
    return false;
  }
  if (coord <= 0) {
    coord = 0;
  }
  t.lo = static_cast<int64_t>(coord);
  if (t.lo >= size - 1) {
    t.lo = t.hi = size - 1;
    coord = static_cast<T>(t.lo);
  } else {
    t.hi = t.lo + 1;
  }
  const T l = coord - static_cast<T>(t.lo);
  t.whi = l;
  t.wlo = static_cast<T>(1) - l;
  return true;
}

// Calls f(tap) for each sample of bin p along one axis that lies on the map, in sample order.
template <typename T, typename F>
C10_HOST_DEVICE inline void for_each_axis_sample(T origin, int64_t p, T bin, int64_t grid, int64_t size, F&& f) {
  for (int64_t i = 0; i < grid; ++i) {
    AxisTap<T> t;
    if (axis_bilinear(sample_coord(origin, p, bin, i, grid), size, t)) {
      f(t);
    }
  }
}

// One 2-D bilinear sample: its four corners, i = 0 (y.lo, x.lo), 1 (y.lo, x.hi), 2 (y.hi, x.lo),
// 3 (y.hi, x.hi), each with weight wy(i) * wx(i).
template <typename T>
struct BilinearSample {
  AxisTap<T> y, x;

  C10_HOST_DEVICE int64_t offset(int i, int64_t W) const {
    return (i < 2 ? y.lo : y.hi) * W + ((i & 1) ? x.hi : x.lo);
  }
  C10_HOST_DEVICE T wy(int i) const {
    return i < 2 ? y.wlo : y.whi;
  }
  C10_HOST_DEVICE T wx(int i) const {
    return (i & 1) ? x.whi : x.wlo;
  }

  // The interpolated value of a plane with rows of W: sum_i (wy * wx) * plane[corner i].
  template <typename S>
  C10_HOST_DEVICE T gather(const S* plane, int64_t W) const {
    return wy(0) * wx(0) * static_cast<T>(plane[offset(0, W)]) + wy(1) * wx(1) * static_cast<T>(plane[offset(1, W)]) +
        wy(2) * wx(2) * static_cast<T>(plane[offset(2, W)]) + wy(3) * wx(3) * static_cast<T>(plane[offset(3, W)]);
  }

  // The share of a sample's gradient g that corner i receives: (g * wy) * wx.
  C10_HOST_DEVICE T grad_share(int i, T g) const {
    return g * wy(i) * wx(i);
  }
};

// Calls f(sample) for each sample of bin (ph, pw) of a RoI that lies on an H x W map, rows of
// samples outer, in sample order.
template <typename T, typename F>
C10_HOST_DEVICE inline void
for_each_bin_sample(const RoiBins<T>& g, int64_t ph, int64_t pw, int64_t H, int64_t W, F&& f) {
  for_each_axis_sample(g.y1, ph, g.bin_h, g.grid_h, H, [&](const AxisTap<T>& ty) {
    for_each_axis_sample(g.x1, pw, g.bin_w, g.grid_w, W, [&](const AxisTap<T>& tx) { f(BilinearSample<T>{ty, tx}); });
  });
}

// The RoIAlign average of bin (ph, pw) of a RoI over one H x W input plane: the sum of its
// samples' bilinear values divided by the sample count, sample by sample (the CUDA kernels; the
// CPU kernels add up the same taps and weights one axis first, through their tap tables).
template <typename T, typename S>
C10_HOST_DEVICE inline T bin_average(const RoiBins<T>& g, int64_t ph, int64_t pw, const S* plane, int64_t H, int64_t W) {
  T sum = 0;
  for_each_bin_sample(g, ph, pw, H, W, [&](const BilinearSample<T>& s) { sum += s.gather(plane, W); });
  return sum / g.count;
}

// ---------------------------------------------------------------------------------------------
// ps_roi_class_logits: FCIS's class score of a RoI, the mean over its assembled cells of
// max(inside, outside) (instfcn_d2/core/fcis/layout.py: inside_outside_class_logits).

// Output channels of the inside and outside scores of class c among the 2 * C1 assembled ones
// (C1 = C + 1 classes, background last): c and C1 + c.
C10_HOST_DEVICE inline int64_t inside_channel(int64_t c) {
  return c;
}
C10_HOST_DEVICE inline int64_t outside_channel(int64_t c, int64_t C1) {
  return C1 + c;
}

// max(inside, outside) of one cell, NaN when either is NaN (as torch.amax).
template <typename T>
C10_HOST_DEVICE inline T inside_outside_max(T inside, T outside) {
  return (inside > outside || inside != inside) ? inside : outside;
}

// ---------------------------------------------------------------------------------------------
// biseg_roi_class_logits: BiSeg's cell likelihoods from two assembled sets and its semantic prior
// (instfcn_d2/core/biseg/prior.py: fuse_likelihoods, combine_prior).

// Bilinear x2 upsampling of an h-long axis to 2h, as torch's upsample_bilinear2d with
// align_corners=False: output index i reads input rows lo and hi with weights wlo and whi.
template <typename T>
struct UpsampleTap {
  int64_t lo, hi;
  T wlo, whi;
};

template <typename T>
C10_HOST_DEVICE inline UpsampleTap<T> upsample2x_tap(int64_t i, int64_t h) {
  // torch: source = scale * (i + 0.5) - 0.5 with scale = h / 2h, clamped at 0
  T src = static_cast<T>(0.5) * (static_cast<T>(i) + static_cast<T>(0.5)) - static_cast<T>(0.5);
  src = src < static_cast<T>(0) ? static_cast<T>(0) : src;
  UpsampleTap<T> t;
  t.lo = static_cast<int64_t>(src);
  t.hi = t.lo + (t.lo < h - 1 ? 1 : 0);
  t.whi = src - static_cast<T>(t.lo);
  t.wlo = static_cast<T>(1) - t.whi;
  return t;
}

// One cell of the x2-upsampled h x h plane `p`, torch's expression order (rows, then columns).
template <typename T, typename S>
C10_HOST_DEVICE inline T upsample2x_at(const S* p, int64_t h, const UpsampleTap<T>& y, const UpsampleTap<T>& x) {
  return y.wlo * (x.wlo * static_cast<T>(p[y.lo * h + x.lo]) + x.whi * static_cast<T>(p[y.lo * h + x.hi])) +
      y.whi * (x.wlo * static_cast<T>(p[y.hi * h + x.lo]) + x.whi * static_cast<T>(p[y.hi * h + x.hi]));
}

// MODEL.BISEG.PRIOR_MODE as the kernels take it.
enum PriorMode : int64_t { kPriorNone = 0, kPriorProduct = 1, kPriorLog = 2 };

// The inside likelihood of a cell with the semantic prior p of its class: the paper's product,
// or Bayes in log space (inside + log(p + eps)); the outside likelihood takes no prior.
template <typename T>
C10_HOST_DEVICE inline T apply_prior(T inside, T p, int64_t mode, T eps) {
  if (mode == kPriorProduct) {
    return inside * p;
  }
  if (mode == kPriorLog) {
#if defined(__CUDA_ARCH__)
    if constexpr (std::is_same<T, float>::value) {
      return inside + ::logf(p + eps);
    } else {
      return inside + ::log(p + eps);
    }
#else
    return inside + std::log(p + eps);
#endif
  }
  return inside;
}

// ---------------------------------------------------------------------------------------------
// window_assemble: windows of m x m pixels with top-left corner (y, x) on an (N, k*k, H, W) map.

struct WindowMap {
  int64_t N, H, W; // the map
  int64_t k, m;    // grid cells per side, window side
};

// Whether the whole window lies on the map.
C10_HOST_DEVICE inline bool window_inside(const WindowMap& w, int64_t y, int64_t x) {
  return y >= 0 && x >= 0 && y + w.m <= w.H && x + w.m <= w.W;
}

// The part of [s.begin, s.end) (window coordinates along an axis whose window starts at `origin`)
// whose pixels lie in [0, size): [max(begin, -origin), min(end, size - origin)).
C10_HOST_DEVICE inline Span clip_to_map(Span s, int64_t origin, int64_t size) {
  return {s.begin > -origin ? s.begin : -origin, s.end < size - origin ? s.end : size - origin};
}

// Offset in the input of pixel (u, v) of the window of image n with top-left corner (y, x):
// input[n, cell_channel(0, gi, gj), y + u, x + v]; -1 where the pixel lies off the map or n is not
// in [0, N) (it reads 0 and receives no gradient).
C10_HOST_DEVICE inline int64_t
window_pixel_offset(const WindowMap& w, int64_t n, int64_t y, int64_t x, int64_t u, int64_t v) {
  const int64_t row = y + u, col = x + v;
  if (!(in_range(n, w.N) && in_range(row, w.H) && in_range(col, w.W))) {
    return -1;
  }
  const int64_t channel = cell_channel(0, grid_cell(u, w.k, w.m), grid_cell(v, w.k, w.m), w.k);
  return ((n * w.k * w.k + channel) * w.H + row) * w.W + col;
}

} // namespace instfcn_d2
