// CPU kernels of the instfcn_d2::window_assemble* operators (semantics: window_assemble.h).
//
// Row u of a window is k runs of consecutive pixels (one per grid cell gj), run j copying
// row y + u of plane gi*k + j, gi = floor(u*k/m). Runs are copied with 16-byte moves (a last
// partial move overlaps the previous one instead of touching memory past the run).
//
// The grid cells, the channel of a cell and the rules for windows that leave the map
// (window_inside, window_pixel_offset, clip_to_map) are in ../common/sampling.h, shared with the
// CUDA kernels; this file holds only the loops and the copies.
#include "window_assemble/window_assemble.h"
#include "common/sampling.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace instfcn_d2 {
namespace {

template <typename T>
inline void copy_run(T* __restrict__ dst, const T* __restrict__ src, int64_t len) {
  constexpr int64_t V = 16 / sizeof(T);
  if (len >= V && len <= 2 * V) {
    std::memcpy(dst, src, 16);
    std::memcpy(dst + len - V, src + len - V, 16);
    return;
  }
  if (len < V) {
    for (int64_t i = 0; i < len; ++i) {
      dst[i] = src[i];
    }
    return;
  }
  int64_t i = 0;
  for (; i + V <= len; i += V) {
    std::memcpy(dst + i, src + i, 16);
  }
  if (i < len) {
    std::memcpy(dst + len - V, src + len - V, 16);
  }
}

// One window lying wholly on the map; src points at its top-left corner in plane 0 of its image.
template <typename T>
inline void copy_window(const T* src, const std::vector<Span>& runs, const WindowMap& w, T* dst) {
  const Span* run = runs.data(); // a local: the copies cannot move it
  const int64_t k = w.k, m = w.m, HW = w.H * w.W;
  for (int64_t u = 0; u < m; ++u) {
    const T* row = src + u * w.W;
    const int64_t gi = grid_cell(u, k, m);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t v0 = run[j].begin;
      copy_run(dst + u * m + v0, row + cell_channel(0, gi, j, k) * HW + v0, run[j].end - v0);
    }
  }
}

void check_batch_indices(const at::Tensor& positions, int64_t N) {
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t p = 0; p < positions.size(0); ++p) {
    TORCH_CHECK(
        in_range(pos[p * 3], N),
        "window_assemble: positions[",
        p,
        ", 0] = ",
        pos[p * 3],
        " is not a batch index in [0, ",
        N,
        ")");
  }
}

} // namespace

at::Tensor window_assemble_forward_cpu(
    const at::Tensor& input,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size) {
  window_assemble_check_forward(input, positions, window_size, group_size);
  TORCH_CHECK(input.device().is_cpu(), "window_assemble_forward_cpu: input must be a CPU tensor");
  const WindowMap w{input.size(0), input.size(2), input.size(3), group_size, window_size};
  const int64_t k = w.k, m = w.m, mm = m * m, P = positions.size(0);
  at::Tensor output = at::empty({P, m, m}, input.options());
  if (P == 0) {
    return output;
  }
  const at::Tensor in = input.contiguous();
  const at::Tensor pos_c = positions.contiguous();
  check_batch_indices(pos_c, w.N);
  const int64_t* pos = pos_c.data_ptr<int64_t>();
  std::vector<Span> runs(k); // run j of every window row: the pixels of grid cell j
  for (int64_t j = 0; j < k; ++j) {
    runs[j] = cell_span(j, k, m);
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "window_assemble_forward_cpu", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = output.data_ptr<scalar_t>();
    at::parallel_for(0, P, std::max<int64_t>(1, 16384 / mm), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = pos[p * 3], y = pos[p * 3 + 1], x = pos[p * 3 + 2];
        scalar_t* out = dst + p * mm;
        if (window_inside(w, y, x)) {
          copy_window(src + (n * k * k * w.H + y) * w.W + x, runs, w, out);
          continue;
        }
        // Partly or wholly off the map: pixels off it read 0.
        for (int64_t u = 0; u < m; ++u) {
          for (int64_t v = 0; v < m; ++v) {
            const int64_t offset = window_pixel_offset(w, n, y, x, u, v);
            out[u * m + v] = offset < 0 ? scalar_t(0) : src[offset];
          }
        }
      }
    });
  });
  return output;
}

at::Tensor window_assemble_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& positions,
    int64_t window_size,
    int64_t group_size,
    int64_t batch_size,
    int64_t height,
    int64_t width) {
  window_assemble_check_backward(grad, positions, window_size, group_size);
  TORCH_CHECK(grad.device().is_cpu(), "window_assemble_backward_cpu: grad must be a CPU tensor");
  const WindowMap w{batch_size, height, width, group_size, window_size};
  const int64_t k = w.k, m = w.m, mm = m * m, P = positions.size(0);
  at::Tensor grad_input = at::zeros({w.N, k * k, w.H, w.W}, grad.options());
  if (P == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor pos_c = positions.contiguous();
  check_batch_indices(pos_c, w.N);
  const int64_t* pos = pos_c.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> of_batch(w.N);
  for (int64_t p = 0; p < P; ++p) {
    of_batch[pos[p * 3]].push_back(p);
  }
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "window_assemble_backward_cpu", [&] {
    const scalar_t* gsrc = g.data_ptr<scalar_t>();
    scalar_t* gdst = grad_input.data_ptr<scalar_t>();
    // One task per input plane (n, cell): listed windows may overlap, but a plane is only
    // written by its own task, so the sums need no atomics.
    at::parallel_for(0, w.N * k * k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const CellOfChannel cell = split_cell_channel(plane, k); // cell.c: the image n
        const Span rows = cell_span(cell.gi, k, m), cols = cell_span(cell.gj, k, m);
        scalar_t* gp = gdst + plane * w.H * w.W;
        for (const int64_t p : of_batch[cell.c]) {
          const int64_t y = pos[p * 3 + 1], x = pos[p * 3 + 2];
          // The cell's block of the window, clipped to the map.
          const Span us = clip_to_map(rows, y, w.H), vs = clip_to_map(cols, x, w.W);
          const scalar_t* gw = gsrc + p * mm;
          for (int64_t u = us.begin; u < us.end; ++u) {
            scalar_t* out_row = gp + (y + u) * w.W + x;
            const scalar_t* in_row = gw + u * m;
            for (int64_t v = vs.begin; v < vs.end; ++v) {
              out_row[v] += in_row[v];
            }
          }
        }
      }
    });
  });
  return grad_input;
}

} // namespace instfcn_d2
