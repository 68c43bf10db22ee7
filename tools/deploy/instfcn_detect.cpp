// instfcn_detect: the detections of one image by a whole exported FCIS / BiSeg, from C++.
//
//   instfcn_detect MODEL.pt2 OPS_LIBRARY IMAGE.bin OUT_PREFIX
//
// MODEL.pt2    whole_aoti.pt2 of tools/export_model.py --format aoti --whole (image to detections)
// OPS_LIBRARY  instfcn_d2's operator library (instfcn_d2/_C*.so): the artefact calls its
//              operators (the position-sensitive assembling, NMS) by name; the library registers
//              them with TORCH_LIBRARY and needs no Python
// IMAGE.bin    int32 h, w, height, width, then 3*h*w float32: the image at the network's input
//              resolution (resized as detectron2's DefaultPredictor resizes it), channels first, in
//              the config's INPUT.FORMAT, pixels 0..255; (height, width) is the size of the results
// OUT_PREFIX   writes OUT_PREFIX.txt (one detection per line: class score x1 y1 x2 y2) and
//              OUT_PREFIX.masks (the K masks, height x width bytes each, 0 or 1, in that order);
//              BiSeg also OUT_PREFIX.sem_seg (float32 (C+1) x height x width probabilities)
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace {

int fail(const std::string& message) {
  std::cerr << "instfcn_detect: " << message << std::endl;
  return 1;
}

bool read_image(const std::string& path, at::Tensor& image, int64_t& height, int64_t& width, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = path + ": cannot be opened";
    return false;
  }
  int32_t header[4];
  if (!in.read(reinterpret_cast<char*>(header), sizeof(header))) {
    error = path + ": shorter than its 16-byte header (int32 h, w, height, width)";
    return false;
  }
  const int64_t h = header[0], w = header[1];
  height = header[2];
  width = header[3];
  if (h < 1 || w < 1 || height < 1 || width < 1) {
    error = path + ": sizes in the header must be >= 1";
    return false;
  }
  image = at::empty({3, h, w}, at::kFloat);
  const std::streamsize bytes = static_cast<std::streamsize>(3 * h * w * sizeof(float));
  if (!in.read(reinterpret_cast<char*>(image.data_ptr<float>()), bytes)) {
    error = path + ": holds fewer than the 3*h*w float32 pixels its header announces";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: instfcn_detect MODEL.pt2 OPS_LIBRARY IMAGE.bin OUT_PREFIX" << std::endl;
    return 2;
  }
  const std::string model_path = argv[1], ops_path = argv[2], image_path = argv[3], prefix = argv[4];
  // RTLD_LAZY: the library's only reference to the Python C API (its module entry point) is
  // never called here, so it is never resolved
  if (!dlopen(ops_path.c_str(), RTLD_LAZY | RTLD_GLOBAL)) {
    return fail(std::string("cannot load the operator library: ") + dlerror());
  }
  at::Tensor image;
  int64_t height = 0, width = 0;
  std::string error;
  if (!read_image(image_path, image, height, width, error)) {
    return fail(error);
  }
  std::vector<at::Tensor> outputs;
  try {
    torch::inductor::AOTIModelPackageLoader loader(model_path);
    // the output size travels as the shape of an empty tensor (instfcn_d2/export/whole.py)
    outputs = loader.run({image, at::empty({height, width, 0}, at::kFloat)});
  } catch (const std::exception& e) {
    return fail(model_path + ": " + e.what());
  }
  if (outputs.size() != 4 && outputs.size() != 5) {
    return fail(model_path + ": returned " + std::to_string(outputs.size()) + " tensors, not a whole FCIS / BiSeg's 4 or 5");
  }
  const at::Tensor boxes = outputs[0].to(at::kFloat).contiguous();
  const at::Tensor scores = outputs[1].to(at::kFloat).contiguous();
  const at::Tensor classes = outputs[2].to(at::kLong).contiguous();
  const at::Tensor masks = outputs[3].to(at::kByte).contiguous();
  const int64_t k = boxes.size(0);

  std::FILE* txt = std::fopen((prefix + ".txt").c_str(), "w");
  if (!txt) {
    return fail(prefix + ".txt: cannot be written");
  }
  for (int64_t i = 0; i < k; ++i) {
    const float* b = boxes.data_ptr<float>() + 4 * i;
    std::fprintf(txt, "%lld %.9g %.9g %.9g %.9g %.9g\n", static_cast<long long>(classes.data_ptr<int64_t>()[i]),
                 scores.data_ptr<float>()[i], b[0], b[1], b[2], b[3]);
  }
  std::fclose(txt);
  std::ofstream(prefix + ".masks", std::ios::binary)
      .write(reinterpret_cast<const char*>(masks.data_ptr<uint8_t>()), static_cast<std::streamsize>(masks.numel()));
  if (outputs.size() == 5) {
    const at::Tensor sem = outputs[4].to(at::kFloat).contiguous();
    std::ofstream(prefix + ".sem_seg", std::ios::binary)
        .write(reinterpret_cast<const char*>(sem.data_ptr<float>()), static_cast<std::streamsize>(sem.numel() * sizeof(float)));
  }
  std::cout << k << " detections in a " << height << " x " << width << " image: " << prefix << ".txt" << std::endl;
  return 0;
}
