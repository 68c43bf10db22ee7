#!/usr/bin/env python
"""Builds the ``instfcn_d2`` package and its native extension ``instfcn_d2._C``.

The extension follows detectron2's ``projects/TensorMask/setup.py``: every ``*.cpp`` under
``layers/csrc`` is always compiled (the CPU kernels and the operator registration); the
``*.cu`` files are added, with ``WITH_CUDA`` defined, when torch sees a GPU or when
``FORCE_CUDA=1`` (CI builds the CUDA sources on a machine without a GPU this way).

torch must lie in the supported range (``instfcn_d2/supported.py``); set
``INSTFCN_D2_ALLOW_UNTESTED_TORCH=1`` to build against another one anyway.
``INSTFCN_D2_BUILD_EXT=0`` installs the Python package without building the extension:
``dev/setup_env.py`` builds the extension in a separate folder and swaps it in, so that a
rebuild never leaves a half-written ``_C`` behind.
"""
import glob
import os
import runpy
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("layers", "csrc")

# Read without importing the package (its __init__ needs detectron2 and the extension).
SUPPORTED = runpy.run_path(os.path.join(HERE, "instfcn_d2", "supported.py"))
_problem = SUPPORTED["torch_problem"](torch.__version__)
if _problem and os.getenv(SUPPORTED["ALLOW_UNTESTED_TORCH_ENV"], "0") != "1":
    sys.exit(f"instfcn_d2 setup.py: {_problem}")


def _want_cuda() -> bool:
    if os.getenv("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def get_extensions():
    if os.getenv("INSTFCN_D2_BUILD_EXT", "1") == "0":
        return []
    sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    sources_cuda = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    if not sources:
        raise RuntimeError(f"no C++ sources found under {os.path.join(HERE, CSRC)}")

    # -fopenmp: at::parallel_for is header-inlined with `#pragma omp parallel`; without the
    # flag the CPU kernels would silently run on one thread.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension

    if _want_cuda():
        if CUDA_HOME is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root "
                "(e.g. /usr/local/cuda-13.0)"
            )
        extension = CUDAExtension
        sources += sources_cuda
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = [
            "-O3",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]

    # The limited C API and py_limited_api: the library links no libtorch_python and no pybind11,
    # so that C++ programs load it without Python (layers/csrc/vision.cpp)
    define_macros += [("Py_LIMITED_API", "0x030A0000")]
    return [
        extension(
            "instfcn_d2._C",
            sources,
            include_dirs=[os.path.abspath(CSRC)],
            define_macros=define_macros,
            py_limited_api=True,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="instfcn_d2",
    version="0.1.0",
    author="instfcn-d2 developers",
    description="InstanceFCN, FCIS and BiSeg for detectron2, with native position-sensitive "
    "assembling layers",
    packages=find_packages(exclude=("configs", "tests", "tools", "dev", "datasets", "layers")),
    python_requires=">={}.{}".format(*SUPPORTED["PYTHON_MIN"]),
    install_requires=[
        # torch, torchvision and detectron2 are installed by dev/setup_env.sh (torch must match
        # the user's CUDA, and detectron2 is not on the package index); list only the rest here.
        "numpy",
        "opencv-python-headless",
        "pycocotools",
        "matplotlib",
        "scipy",
        "iopath",
    ],
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
