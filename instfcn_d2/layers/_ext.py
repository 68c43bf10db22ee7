"""Loads the compiled extension ``instfcn_d2._C``; importing it registers ``torch.ops.instfcn_d2.*``."""
import torch  # noqa: F401  (the extension links against libtorch: load torch first)

try:
    from instfcn_d2 import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"instfcn_d2's native extension instfcn_d2._C could not be imported ({e}). "
        "Build it from the repository root with `pip install -e .` "
        "(or `python setup.py build_ext --inplace`); set FORCE_CUDA=1 and CUDA_HOME to also build "
        "the CUDA kernels on a machine without a GPU."
    ) from e


def has_cuda() -> bool:
    """True when ``instfcn_d2._C`` was compiled with its CUDA kernels."""
    return bool(_C.has_cuda())


__all__ = ["has_cuda"]
