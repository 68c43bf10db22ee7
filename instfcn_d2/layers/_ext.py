"""Loads the compiled extension ``instfcn_d2._C``; importing it registers ``torch.ops.instfcn_d2.*``."""
import torch  # (the extension links against libtorch: load torch first)

try:
    from instfcn_d2 import _C  # noqa: F401  (loading it registers the operators)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"instfcn_d2's native extension instfcn_d2._C could not be imported ({e}). "
        "Build it from the repository root with `pip install -e .` "
        "(or `python setup.py build_ext --inplace`); set FORCE_CUDA=1 and CUDA_HOME to also build "
        "the CUDA kernels on a machine without a GPU."
    ) from e


def check_sizes(op: str, size_name: str, size: int, group_size: int, why: str) -> None:
    """The argument checks both ops make on their output size (``m``) and group size (``k``):
    ints, ``>= 1``, and ``k <= m`` (``why``: what a larger ``k`` would leave without pixels)."""
    for name, value in ((size_name, size), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{op}: {name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    if group_size > size:
        raise ValueError(f"{op}: group_size (k = {group_size}) must be <= {size_name} (m = {size}): {why}")


def has_cuda() -> bool:
    """True when ``instfcn_d2._C`` was compiled with its CUDA kernels."""
    return bool(torch.ops.instfcn_d2.has_cuda())


__all__ = ["has_cuda", "check_sizes"]
