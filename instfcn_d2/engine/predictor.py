"""detectron2's ``DefaultPredictor`` for a trained model: its checkpoint loaded strictly."""
from ..checkpoint import load_trained_weights

__all__ = ["build_predictor"]


def build_predictor(cfg):
    """detectron2's ``DefaultPredictor(cfg)``, with ``cfg.MODEL.WEIGHTS`` loaded by
    :func:`instfcn_d2.checkpoint.load_trained_weights`: a checkpoint that does not fit the model
    raises :class:`~instfcn_d2.checkpoint.CheckpointMismatchError` naming the file and the
    parameters (``DefaultPredictor`` alone only warns, and predicts with random parameters).

    Check the weights first with :func:`instfcn_d2.checkpoint.require_trained_weights`; an empty
    ``MODEL.WEIGHTS`` gives a randomly initialised model."""
    from detectron2.engine import DefaultPredictor

    weights = cfg.MODEL.WEIGHTS
    no_weights = cfg.clone()
    no_weights.defrost()
    no_weights.MODEL.WEIGHTS = ""
    no_weights.freeze()
    predictor = DefaultPredictor(no_weights)
    if weights:
        load_trained_weights(predictor.model, weights)
    predictor.cfg = cfg.clone()
    return predictor
