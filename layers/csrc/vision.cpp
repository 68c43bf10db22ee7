// Operator registration of instfcn_d2's native layers.
//
// Schemas live in TORCH_LIBRARY(instfcn_d2): torch.ops.instfcn_d2.<name>. Kernels are
// registered per device; fake (meta) kernels and autograd formulas are registered from Python
// (instfcn_d2/layers/), which is what torch.compile / torch.export / torch.jit.trace use.
// SymInt arguments let the backward ops carry symbolic input shapes under torch.compile.
//
// The library needs no Python: registration is TORCH_LIBRARY only (no pybind11), so a C++ program
// (tools/deploy/) loads the same file with dlopen and calls the operators, e.g. from an
// AOTInductor artefact. Python imports it as the empty module instfcn_d2._C (PyInit__C below),
// built against the limited C API and not linked to libtorch_python.
#include <torch/library.h>

#include "biseg_roi_class_logits/biseg_roi_class_logits.h"
#include "ps_roi_assemble/ps_roi_assemble.h"
#include "nms/nms.h"
#include "ps_roi_class_logits/ps_roi_class_logits.h"
#include "window_assemble/window_assemble.h"

namespace instfcn_d2 {
namespace {
bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}
} // namespace
} // namespace instfcn_d2

TORCH_LIBRARY(instfcn_d2, m) {
  m.def("has_cuda() -> bool", &instfcn_d2::has_cuda);
  m.def(
      "ps_roi_assemble(Tensor input, Tensor rois, float spatial_scale, int output_size, int group_size, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "ps_roi_assemble_backward(Tensor grad, Tensor rois, float spatial_scale, int output_size, int group_size, "
      "int sampling_ratio, bool aligned, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
  m.def(
      "ps_roi_class_logits(Tensor input, Tensor rois, float spatial_scale, int output_size, int group_size, "
      "int sampling_ratio, bool aligned, int num_classes) -> Tensor");
  m.def(
      "biseg_roi_class_logits(Tensor coarse, Tensor? fine, Tensor? prior, Tensor rois, float spatial_scale, "
      "int group_size, float fine_spatial_scale, int fine_group_size, int mask_size, int sampling_ratio, "
      "bool aligned, int num_classes, int prior_mode, float eps) -> Tensor");
  m.def("window_assemble(Tensor input, Tensor positions, int window_size, int group_size) -> Tensor");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "window_assemble_backward(Tensor grad, Tensor positions, int window_size, int group_size, "
      "SymInt batch_size, SymInt height, SymInt width) -> Tensor");
}

TORCH_LIBRARY_IMPL(instfcn_d2, CPU, m) {
  m.impl("ps_roi_assemble", &instfcn_d2::ps_roi_assemble_forward_cpu);
  m.impl("ps_roi_assemble_backward", &instfcn_d2::ps_roi_assemble_backward_cpu);
  m.impl("ps_roi_class_logits", &instfcn_d2::ps_roi_class_logits_cpu);
  m.impl("biseg_roi_class_logits", &instfcn_d2::biseg_roi_class_logits_cpu);
  m.impl("window_assemble", &instfcn_d2::window_assemble_forward_cpu);
  m.impl("window_assemble_backward", &instfcn_d2::window_assemble_backward_cpu);
  m.impl("nms", &instfcn_d2::nms_cpu);
  m.impl("batched_nms", &instfcn_d2::batched_nms_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(instfcn_d2, CUDA, m) {
  m.impl("ps_roi_assemble", &instfcn_d2::ps_roi_assemble_forward_cuda);
  m.impl("ps_roi_assemble_backward", &instfcn_d2::ps_roi_assemble_backward_cuda);
  m.impl("ps_roi_class_logits", &instfcn_d2::ps_roi_class_logits_cuda);
  m.impl("biseg_roi_class_logits", &instfcn_d2::biseg_roi_class_logits_cuda);
  m.impl("window_assemble", &instfcn_d2::window_assemble_forward_cuda);
  m.impl("window_assemble_backward", &instfcn_d2::window_assemble_backward_cuda);
  m.impl("nms", &instfcn_d2::nms_cuda);
  m.impl("batched_nms", &instfcn_d2::batched_nms_cuda);
}
#endif

// Importing instfcn_d2._C from Python loads this file, which runs the registrations above; the
// module itself is empty (the operators are torch.ops.instfcn_d2.*). Only a function of the C API
// is referenced, resolved when Python calls it: a C++ program that dlopens the library lazily
// never does.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
