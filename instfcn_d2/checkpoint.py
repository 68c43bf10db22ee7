"""A ``DetectionCheckpointer`` that refuses checkpoints which do not fit the model.

detectron2's checkpointer only logs a warning and skips a parameter whose shape differs (right
for fine-tuning from ImageNet weights, wrong for evaluating a trained model: the evaluation would
silently run with random weights). ``strict=True`` turns shape mismatches and missing model
parameters into an error naming the file and the parameters.
"""
from detectron2.checkpoint import DetectionCheckpointer


class CheckpointMismatchError(ValueError):
    pass


class StrictDetectionCheckpointer(DetectionCheckpointer):
    def __init__(self, model, save_dir="", *, strict=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._loading = None

    def _load_file(self, filename):
        self._loading = filename
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            problems = [
                f"  {name}: checkpoint {tuple(shape_ckpt)} vs model {tuple(shape_model)}"
                for name, shape_ckpt, shape_model in incompatible.incorrect_shapes
            ]
            problems += [f"  {name}: missing from the checkpoint" for name in incompatible.missing_keys]
            if problems:
                raise CheckpointMismatchError(
                    f"checkpoint {self._loading} does not fit the model built from this config "
                    f"({len(problems)} parameter(s)):\n" + "\n".join(problems[:20])
                )
        return incompatible
