// CPU kernels of the instfcn_d2::window_assemble* operators (semantics: window_assemble.h).
//
// Row u of a window is k runs of consecutive pixels (one per grid cell gj), run j copying
// row y + u of plane gi*k + j, gi = floor(u*k/m). Runs are copied with 16-byte moves (a last
// partial move overlaps the previous one instead of touching memory past the run).
#include "window_assemble/window_assemble.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace instfcn_d2 {
namespace {

// Run j of every window row: first column v0[j] and length len[j].
struct Runs {
  std::vector<int64_t> v0, len;
  Runs(int64_t k, int64_t m) : v0(k), len(k) {
    for (int64_t j = 0; j < k; ++j) {
      v0[j] = window_cell_start(j, k, m);
      len[j] = window_cell_start(j + 1, k, m) - v0[j];
    }
  }
};

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

// One window lying wholly inside the map; src points at its top-left corner in plane 0.
template <typename T>
inline void copy_window(const T* src, const Runs& runs, int64_t k, int64_t m, int64_t H, int64_t W, T* dst) {
  const int64_t* v0 = runs.v0.data(); // locals: the copies cannot move them
  const int64_t* len = runs.len.data();
  const int64_t HW = H * W;
  for (int64_t u = 0; u < m; ++u) {
    const T* row = src + (u * k / m) * k * HW + u * W;
    for (int64_t j = 0; j < k; ++j) {
      copy_run(dst + u * m + v0[j], row + j * HW + v0[j], len[j]);
    }
  }
}

// Per-axis runs of window pixels with the same grid cell: cell g spans [start[g], start[g+1]).
std::vector<int64_t> cell_starts(int64_t k, int64_t m) {
  std::vector<int64_t> s(k + 1);
  for (int64_t g = 0; g <= k; ++g) {
    s[g] = window_cell_start(g, k, m);
  }
  return s;
}

void check_batch_indices(const at::Tensor& positions, int64_t N) {
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t p = 0; p < positions.size(0); ++p) {
    TORCH_CHECK(
        pos[p * 3] >= 0 && pos[p * 3] < N,
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
  window_assemble_check_input(input, window_size, group_size);
  window_assemble_check_positions(positions, input, "input");
  TORCH_CHECK(input.device().is_cpu(), "window_assemble_forward_cpu: input must be a CPU tensor");
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t k = group_size, m = window_size, mm = m * m, P = positions.size(0);
  at::Tensor output = at::empty({P, m, m}, input.options());
  if (P == 0) {
    return output;
  }
  const at::Tensor in = input.contiguous();
  const at::Tensor pos_c = positions.contiguous();
  check_batch_indices(pos_c, N);
  const int64_t* pos = pos_c.data_ptr<int64_t>();
  const Runs runs(k, m);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "window_assemble_forward_cpu", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = output.data_ptr<scalar_t>();
    at::parallel_for(0, P, std::max<int64_t>(1, 16384 / mm), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = pos[p * 3], y = pos[p * 3 + 1], x = pos[p * 3 + 2];
        scalar_t* out = dst + p * mm;
        const scalar_t* base = src + n * k * k * H * W;
        if (y >= 0 && x >= 0 && y + m <= H && x + m <= W) {
          copy_window(base + y * W + x, runs, k, m, H, W, out);
          continue;
        }
        // Partly or wholly outside: outside pixels read 0.
        for (int64_t u = 0; u < m; ++u) {
          const int64_t row = y + u;
          if (row < 0 || row >= H) {
            std::fill(out + u * m, out + (u + 1) * m, scalar_t(0));
            continue;
          }
          const scalar_t* cells = base + ((u * k / m) * k) * H * W + row * W;
          for (int64_t v = 0; v < m; ++v) {
            const int64_t col = x + v;
            out[u * m + v] = (col >= 0 && col < W) ? cells[(v * k / m) * H * W + col] : scalar_t(0);
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
  window_assemble_check_sizes(window_size, group_size);
  window_assemble_check_positions(positions, grad, "grad");
  TORCH_CHECK(grad.device().is_cpu(), "window_assemble_backward_cpu: grad must be a CPU tensor");
  const int64_t k = group_size, m = window_size, mm = m * m, P = positions.size(0);
  const int64_t N = batch_size, H = height, W = width;
  TORCH_CHECK(
      grad.dim() == 3 && grad.size(0) == P && grad.size(1) == m && grad.size(2) == m,
      "window_assemble_backward: grad must have shape (P, m, m) = (",
      P,
      ", ",
      m,
      ", ",
      m,
      "), got ",
      grad.sizes());
  at::Tensor grad_input = at::zeros({N, k * k, H, W}, grad.options());
  if (P == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor pos_c = positions.contiguous();
  check_batch_indices(pos_c, N);
  const int64_t* pos = pos_c.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> of_batch(N);
  for (int64_t p = 0; p < P; ++p) {
    of_batch[pos[p * 3]].push_back(p);
  }
  const std::vector<int64_t> start = cell_starts(k, m);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "window_assemble_backward_cpu", [&] {
    const scalar_t* gsrc = g.data_ptr<scalar_t>();
    scalar_t* gdst = grad_input.data_ptr<scalar_t>();
    // One task per input plane (n, cell): listed windows may overlap, but a plane is only
    // written by its own task, so the sums need no atomics.
    at::parallel_for(0, N * k * k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / (k * k), gi = (plane % (k * k)) / k, gj = plane % k;
        scalar_t* gp = gdst + plane * H * W;
        for (const int64_t p : of_batch[n]) {
          const int64_t y = pos[p * 3 + 1], x = pos[p * 3 + 2];
          // Clip the cell's block of the window to the map.
          const int64_t u0 = std::max(start[gi], -y), u1 = std::min(start[gi + 1], H - y);
          const int64_t v0 = std::max(start[gj], -x), v1 = std::min(start[gj + 1], W - x);
          const scalar_t* gw = gsrc + p * mm;
          for (int64_t u = u0; u < u1; ++u) {
            scalar_t* out_row = gp + (y + u) * W + x;
            const scalar_t* in_row = gw + u * m;
            for (int64_t v = v0; v < v1; ++v) {
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
