"""detectron2's ``CityscapesInstanceEvaluator`` (the official ``cityscapesscripts`` AP and AP50 of
the instance masks) as the trainer uses it on ``evaluator_type "cityscapes_instance"`` datasets.

Three things differ from constructing detectron2's class directly:

* ``cityscapesscripts`` writes its per-image matches (``matches.json``) into the *current working
  directory*; :meth:`CityscapesInstanceEvaluator.evaluate` runs with ``output_dir`` (the
  inference folder, created if needed) as the working directory, so the file lands there next to
  the other evaluators' outputs instead of wherever the command was started; without
  ``output_dir``, in the evaluator's temporary folder, removed afterwards;
* the ``cityscapesscripts`` import alias that detectron2's main branch needs
  (:mod:`instfcn_d2.data.cityscapes`) is installed, also where ``instfcn_d2.data`` was not imported;
* ``cityscapesscripts`` (2.3.0, its newest release) predates the numpy this project runs with: it
  calls ``np.in1d``, which numpy 2.4 removed, and its ``matches.json`` writer fails on numpy
  integer scalars, which its matching produces with current numpy. Its evaluation module (only that
  module's globals: numpy and ``cityscapesscripts.helpers`` are left alone) gets a ``np`` whose
  ``in1d`` is the equivalent ``np.isin`` on the flattened input (on a numpy without ``in1d``), and
  a ``writeDict2JSON`` that writes numpy scalars and arrays as numbers and lists.
"""
import contextlib
import json
import os
import types

import numpy as np

from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator
from detectron2.utils import comm

from ..data.cityscapes import install_cityscapesscripts_alias

__all__ = ["CityscapesInstanceEvaluator"]


@contextlib.contextmanager
def _working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class _NumpyWithIn1d(types.ModuleType):
    """numpy plus ``in1d`` (numpy < 2.4's, flattened ``isin``), for one module's global ``np``."""

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert)


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    return o.__dict__  # cityscapesscripts' own default (its CArgs / Instance objects)


def _write_dict_to_json(dictName, fileName):
    """cityscapesscripts' ``writeDict2JSON`` (same arguments and output), numpy scalars included."""
    with open(fileName, "w") as f:
        f.write(json.dumps(dictName, default=_json_default, sort_keys=True, indent=4))


def _numpy_compat_for_cityscapesscripts():
    """See the module docstring; idempotent."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

    if not hasattr(cityscapes_eval.np, "in1d"):
        cityscapes_eval.np = _NumpyWithIn1d()
    cityscapes_eval.writeDict2JSON = _write_dict_to_json


class CityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    """detectron2's evaluator (same inputs, same ``{"segm": {"AP", "AP50"}}`` result, percent),
    whose evaluation runs in ``output_dir`` (see the module docstring)."""

    def __init__(self, dataset_name: str, output_dir: str = None):
        install_cityscapesscripts_alias()
        super().__init__(dataset_name)
        self._output_dir = output_dir

    def evaluate(self):
        if not comm.is_main_process():  # detectron2 synchronises, then only the main process evaluates
            return super().evaluate()
        _numpy_compat_for_cityscapesscripts()
        folder = self._output_dir or self._temp_dir
        os.makedirs(folder, exist_ok=True)
        with _working_directory(folder):
            return super().evaluate()
