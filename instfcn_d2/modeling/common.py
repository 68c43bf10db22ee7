"""What the three methods truly share: the config check every builder makes and the initialisation
of the layers they add on a trunk."""
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from detectron2.config import CfgNode

__all__ = ["require_config_node", "init_new_layers", "NEW_LAYER_INITS", "set_lr_multiplier", "LR_MULTIPLIER_ATTR"]

#: Attribute of a module whose own parameters train at ``SOLVER.BASE_LR`` times this factor
#: (read by the trainer's optimizer, ``instfcn_d2.engine.optimizer``).
LR_MULTIPLIER_ATTR = "lr_multiplier"

#: ``init_new_layers`` schemes: "normal" (the papers' and the official code's N(0, 0.01), made for
#: an ImageNet trunk) or "msra" (detectron2's ``c2_msra_fill``, He init, for training from scratch).
NEW_LAYER_INITS = ("normal", "msra")


def require_config_node(cfg: "CfgNode", node: str) -> None:
    """Raise a ``KeyError`` saying how to fix it when ``cfg.MODEL.<node>`` is missing (a config
    made by detectron2's ``get_cfg()`` without :func:`instfcn_d2.add_instfcn_config`)."""
    if node not in cfg.MODEL:
        raise KeyError(
            f"cfg.MODEL.{node} is missing: build the config with instfcn_d2.config.get_instfcn_cfg() "
            "or call instfcn_d2.add_instfcn_config(cfg)"
        )


def init_new_layers(module: nn.Module, init: str = "normal", std: float = 0.01) -> None:
    """Initialise every conv / linear layer of ``module``: ``"normal"``: weights N(0, ``std``),
    bias 0; ``"msra"``: ``c2_msra_fill`` (He-normal weights, bias 0)."""
    if init not in NEW_LAYER_INITS:
        raise ValueError(f"init must be one of {NEW_LAYER_INITS}, got {init!r}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            if init == "msra":
                from fvcore.nn import weight_init

                weight_init.c2_msra_fill(layer)
            else:
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)


def set_lr_multiplier(module: nn.Module, factor: float) -> None:
    """Train the parameters of ``module`` (and of its children) at ``factor`` times the base
    learning rate, as the official FCIS's ``lr_mult`` on conv_new_1 (``TRAIN.CONVNEW3``)."""
    if not factor > 0:
        raise ValueError(f"a learning-rate multiplier must be > 0, got {factor}")
    setattr(module, LR_MULTIPLIER_ATTR, float(factor))
