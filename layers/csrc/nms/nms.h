// Greedy non-maximum suppression, as torchvision's nms, registered with this library so that a
// whole exported model (instfcn_d2/export/whole.py) runs where only this library and libtorch are
// loaded: torchvision's ops library links libtorch_python, which a C++ program cannot load without
// Python (tools/deploy/).
//
// Contract shared by the CPU (nms_cpu.cpp) and CUDA (nms_cuda.cu) kernels; registered in
// ../vision.cpp as
//   instfcn_d2::nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor
//
// boxes (N, 4) XYXY and scores (N,), float32 / float64, on one device; returns the int64 indices
// of the kept boxes by decreasing score. Boxes are visited by decreasing score, equal scores in
// index order (a stable sort); a box is suppressed when its IoU (box_iou below, the expression of
// torchvision's kernels) with a kept box is > iou_threshold, so the kept set equals
// torchvision.ops.nms's (tested against it).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

namespace instfcn_d2 {

// IoU of two XYXY boxes, areas without the old "+1": the expression of torchvision's nms kernels.
template <typename T>
C10_HOST_DEVICE inline T box_iou(const T* a, const T* b) {
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  const T w = right - left > T(0) ? right - left : T(0);
  const T h = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = w * h;
  const T area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const T area_b = (b[2] - b[0]) * (b[3] - b[1]);
  return inter / (area_a + area_b - inter);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
// NMS within each group of idxs (torchvision's batched_nms): the kept indices by decreasing score,
// the same as nms of the boxes moved apart by group (the offset trick), in the same order.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold);
#endif

inline void nms_check(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be (N, 4), got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "nms: scores must be (N,) with N = ", boxes.size(0), ", got ", scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), "nms: boxes and scores dtypes differ: ",
              boxes.scalar_type(), " and ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "nms: boxes and scores are on different devices");
}

inline void batched_nms_check(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  nms_check(boxes, scores);
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
              "batched_nms: idxs must be (N,) with N = ", boxes.size(0), ", got ", idxs.sizes());
  TORCH_CHECK(!at::isFloatingType(idxs.scalar_type()) && idxs.scalar_type() != at::kBool,
              "batched_nms: idxs must hold integer group ids, got ", idxs.scalar_type());
  TORCH_CHECK(idxs.device() == boxes.device(), "batched_nms: idxs and boxes are on different devices");
}

}  // namespace instfcn_d2
