"""detectron2's ``CityscapesInstanceEvaluator`` (the official ``cityscapesscripts`` AP and AP50 of
the instance masks) as the trainer uses it on ``evaluator_type "cityscapes_instance"`` datasets.

Four things differ from constructing detectron2's class directly:

* it works with several machines: detectron2's has every process write its per-image prediction
  files (a text file and one PNG per instance) into a temporary folder of the main process, which
  only exists where the processes share a file system, so it refuses to run when they are on more
  than one machine (``comm.get_local_size() != comm.get_world_size()``). Here each process keeps
  its predictions in memory (masks as compressed RLEs), :meth:`~CityscapesInstanceEvaluator.evaluate`
  gathers them on the main process, which writes the same files (same names, same PNG content,
  same text lines) into its own temporary folder and evaluates them as detectron2 does. With one
  process or several, the files, and so the numbers, are the same;

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
import io
import json
import os
import tempfile
import types

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

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
    whose predictions are gathered in memory (one or several machines) and whose evaluation runs in
    ``output_dir`` (see the module docstring)."""

    def __init__(self, dataset_name: str, output_dir: str = None):
        install_cityscapesscripts_alias()
        super().__init__(dataset_name)
        self._output_dir = output_dir
        self._predictions = {}

    def reset(self):
        # not detectron2's: no shared temporary folder (see the module docstring)
        self._predictions = {}

    def process(self, inputs, outputs):
        """Keep each image's instances as detectron2 writes them: ``basename -> [(PNG file name,
        Cityscapes label id, score, RLE of the mask)]`` (an image without ``instances``: ``[]``)."""
        from cityscapesscripts.helpers.labels import name2label

        for inp, output in zip(inputs, outputs):
            basename = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            rows = []
            if "instances" in output:
                inst = output["instances"].to(self._cpu_device)
                masks = inst.pred_masks.numpy().astype(np.uint8)
                rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(inst) else []
                for i in range(len(inst)):
                    name = self._metadata.thing_classes[int(inst.pred_classes[i])]
                    # "{}".format of a 0-d tensor is that of its float: the line detectron2 writes
                    score = inst.scores[i].item()
                    rows.append((f"{basename}_{i}_{name}.png", name2label[name].id, score, rles[i]))
            self._predictions[basename] = rows

    def _write_predictions(self, predictions, folder):
        """detectron2's per-image files: ``<basename>_pred.txt`` (``png class_id score`` lines) and
        the masks as 0 / 255 PNGs."""
        for basename, rows in predictions.items():
            with open(os.path.join(folder, basename + "_pred.txt"), "w") as fout:
                for png_name, class_id, score, rle in rows:
                    mask = mask_util.decode(rle).astype("uint8")
                    buf = io.BytesIO()
                    Image.fromarray(mask * 255).save(buf, format="PNG")
                    with open(os.path.join(folder, png_name), "wb") as f:
                        f.write(buf.getvalue())
                    fout.write("{} {} {}\n".format(png_name, class_id, score))

    def evaluate(self):
        gathered = comm.gather(self._predictions, dst=0)  # a collective: every process calls it
        if not comm.is_main_process():
            comm.synchronize()  # detectron2's evaluate() waits for the main process's the same way
            return {}
        predictions = {}
        for chunk in gathered:
            for basename, rows in chunk.items():
                predictions.setdefault(basename, rows)  # an image evaluated twice keeps its first result
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._temp_dir = self._working_dir.name
        self._logger.info("Writing cityscapes results to temporary directory {} ...".format(self._temp_dir))
        self._write_predictions(predictions, self._temp_dir)
        _numpy_compat_for_cityscapesscripts()
        folder = self._output_dir or self._temp_dir
        os.makedirs(folder, exist_ok=True)
        with _working_directory(folder):
            return super().evaluate()  # synchronises with the other processes, then evaluates
