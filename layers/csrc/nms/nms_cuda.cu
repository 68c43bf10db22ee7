// CUDA kernel of instfcn_d2::nms (contract in nms.h). The boxes, sorted by decreasing score, are
// compared in tiles of 64 x 64 on the GPU: bit j of mask[i][tile] says that box i (in score order)
// overlaps box 64 * tile + j by more than the threshold. The greedy pass over those bits is serial
// and runs on the host, as in torchvision's kernel; both use box_iou of nms.h.
#include "common/cuda_launch.cuh"
#include "nms/nms.h"

#include <c10/cuda/CUDAGuard.h>

#include <vector>

namespace instfcn_d2 {
namespace {

constexpr int kTile = 64;

template <typename T>
__global__ void overlap_mask_kernel(int64_t n, const T* boxes, double threshold, uint64_t* mask) {
  const int64_t row_tile = blockIdx.y;
  const int64_t col_tile = blockIdx.x;
  if (row_tile > col_tile) {
    return;  // only boxes after box i (in score order) can be suppressed by it
  }
  const int64_t rows = min(static_cast<int64_t>(kTile), n - row_tile * kTile);
  const int64_t cols = min(static_cast<int64_t>(kTile), n - col_tile * kTile);
  __shared__ T tile[kTile * 4];
  if (threadIdx.x < cols) {
    for (int k = 0; k < 4; ++k) {
      tile[threadIdx.x * 4 + k] = boxes[(col_tile * kTile + threadIdx.x) * 4 + k];
    }
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    const int64_t i = row_tile * kTile + threadIdx.x;
    const T* box = boxes + i * 4;
    uint64_t bits = 0;
    const int start = row_tile == col_tile ? threadIdx.x + 1 : 0;
    for (int j = start; j < cols; ++j) {
      if (box_iou(box, tile + j * 4) > static_cast<T>(threshold)) {
        bits |= uint64_t(1) << j;
      }
    }
    const int64_t tiles = (n + kTile - 1) / kTile;
    mask[i * tiles + col_tile] = bits;
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  nms_check(boxes, scores);
  TORCH_CHECK(boxes.is_cuda(), "nms_cuda: boxes must be on a CUDA device");
  at::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes.index_select(0, order).contiguous();
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::Tensor mask = at::empty({n * tiles}, boxes.options().dtype(at::kLong));
  const dim3 grid(tiles, tiles);
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_cuda", [&] {
    overlap_mask_kernel<scalar_t><<<grid, kTile, 0, c10::cuda::getCurrentCUDAStream()>>>(
        n, sorted.data_ptr<scalar_t>(), iou_threshold, reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor host = mask.cpu();
  const uint64_t* bits = reinterpret_cast<const uint64_t*>(host.data_ptr<int64_t>());
  std::vector<uint64_t> removed(tiles, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i / kTile] & (uint64_t(1) << (i % kTile))) {
      continue;
    }
    keep.push_back(i);
    for (int64_t t = 0; t < tiles; ++t) {
      removed[t] |= bits[i * tiles + t];
    }
  }
  const at::Tensor kept = at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes.device());
  return order.index_select(0, kept);
}

// On the GPU the offset trick (torchvision's for small inputs): every pair is compared in parallel.
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  batched_nms_check(boxes, scores, idxs);
  if (boxes.size(0) == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor offsets = idxs.to(boxes.scalar_type()) * (boxes.max() + 1);
  return nms_cuda(boxes + offsets.unsqueeze(1), scores, iou_threshold);
}

}  // namespace instfcn_d2
