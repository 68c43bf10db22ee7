// CPU kernels of instfcn_d2::nms and instfcn_d2::batched_nms (contract in nms.h): the greedy loop
// over the boxes by decreasing score, each kept box suppressing the later ones it overlaps by more
// than the threshold; batched_nms runs that loop within each group only.
#include "nms/nms.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

namespace instfcn_d2 {

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  nms_check(boxes, scores);
  TORCH_CHECK(boxes.device().is_cpu(), "nms_cpu: boxes must be on the CPU");
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor b = boxes.contiguous();
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> keep;
  keep.reserve(n);
  const int64_t* ord = order.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    const scalar_t* data = b.data_ptr<scalar_t>();
    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = ord[a];
      if (suppressed[i]) {
        continue;
      }
      keep.push_back(i);
      for (int64_t c = a + 1; c < n; ++c) {
        const int64_t j = ord[c];
        if (!suppressed[j] && box_iou(data + 4 * i, data + 4 * j) > threshold) {
          suppressed[j] = 1;
        }
      }
    }
  });
  return at::tensor(keep, boxes.options().dtype(at::kLong));
}

// Why a loop per group rather than nms of the boxes moved apart by group (what an exported graph
// could otherwise call): that compares every kept box with every later box of every group, and
// FCIS scores all (candidate, class) pairs, ~48,000 boxes at C = 80: 540 ms per call measured on
// the development CPU, 60% of a whole exported FCIS; per group it is 80 loops of 600 boxes.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  batched_nms_check(boxes, scores, idxs);
  TORCH_CHECK(boxes.device().is_cpu(), "batched_nms_cpu: boxes must be on the CPU");
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor b = boxes.contiguous();
  const at::Tensor group = idxs.to(at::kLong).contiguous();
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* g = group.data_ptr<int64_t>();
  // the score order, grouped: each group's boxes stay in score order
  std::vector<int64_t> grouped(ord, ord + n);
  std::stable_sort(grouped.begin(), grouped.end(), [&](int64_t a, int64_t c) { return g[a] < g[c]; });
  std::vector<uint8_t> suppressed(n, 0), kept(n, 0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "batched_nms_cpu", [&] {
    const scalar_t* data = b.data_ptr<scalar_t>();
    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    for (int64_t start = 0; start < n;) {
      int64_t end = start + 1;
      while (end < n && g[grouped[end]] == g[grouped[start]]) {
        ++end;
      }
      for (int64_t a = start; a < end; ++a) {
        const int64_t i = grouped[a];
        if (suppressed[i]) {
          continue;
        }
        kept[i] = 1;
        for (int64_t c = a + 1; c < end; ++c) {
          const int64_t j = grouped[c];
          if (!suppressed[j] && box_iou(data + 4 * i, data + 4 * j) > threshold) {
            suppressed[j] = 1;
          }
        }
      }
      start = end;
    }
  });
  std::vector<int64_t> keep;
  for (int64_t a = 0; a < n; ++a) { // by decreasing score, ties as nms orders them
    if (kept[ord[a]]) {
      keep.push_back(ord[a]);
    }
  }
  return at::tensor(keep, boxes.options().dtype(at::kLong));
}

}  // namespace instfcn_d2
