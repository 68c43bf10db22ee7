// CPU kernel of instfcn_d2::nms (contract in nms.h): the greedy loop over the boxes by decreasing
// score, each kept box suppressing the later ones it overlaps by more than the threshold.
#include "nms/nms.h"

#include <ATen/Dispatch.h>

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

}  // namespace instfcn_d2
