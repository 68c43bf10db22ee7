// Bilinear sampling along one axis, shared by the CPU and CUDA kernels of ps_roi_assemble so the
// two cannot drift apart: torchvision's bilinear_interpolate split per axis.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace instfcn_d2 {

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
