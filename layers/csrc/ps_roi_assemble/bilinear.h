// Bilinear sampling along one axis and the sample count per bin side, shared by the CPU and
// CUDA kernels of ps_roi_assemble so the two cannot drift apart: torchvision's
// bilinear_interpolate split per axis.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace instfcn_d2 {

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

// Returns false for a sample outside [-1, size] (it contributes 0); otherwise the two taps
// lo/hi and their weights wlo/whi. Coordinates <= 0 clamp to 0, past the last pixel to it.
template <typename T>
C10_HOST_DEVICE inline bool axis_bilinear(T coord, int64_t size, int64_t& lo, int64_t& hi, T& wlo, T& whi) {
  if (coord < static_cast<T>(-1.0) || coord > static_cast<T>(size)) {
    return false;
  }
  if (coord <= 0) {
    coord = 0;
  }
  lo = static_cast<int64_t>(coord);
  if (lo >= size - 1) {
    lo = hi = size - 1;
    coord = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = coord - static_cast<T>(lo);
  whi = l;
  wlo = static_cast<T>(1) - l;
  return true;
}

}  // namespace instfcn_d2
