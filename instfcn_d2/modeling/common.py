"""What the three methods truly share: the config check every builder makes, the initialisation
of the layers they add on a trunk, and the tight boxes of binary masks."""
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # imported lazily: exported models run this module's mask_tight_boxes without detectron2
    from detectron2.config import CfgNode

__all__ = ["require_config_node", "init_new_layers", "NEW_LAYER_INITS", "mask_tight_boxes"]

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


def mask_tight_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes ``(P, 4)`` float32 of bool masks ``(P, H, W)`` (pixel ``i`` spans ``[i, i+1)``);
    an empty mask gets an all-zero box.

    The same boxes as detectron2's ``BitMasks.get_bounding_boxes`` (the tests use it as the oracle),
    written again because that one loops over the masks in Python and builds its result on the CPU;
    this runs on every voted or pasted mask at inference, on the masks' device."""
    P, H, W = masks.shape
    device = masks.device
    if P == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=device)
    x_any = masks.any(dim=1)  # (P, W)
    y_any = masks.any(dim=2)  # (P, H)
    xs = torch.arange(W, device=device)
    ys = torch.arange(H, device=device)
    x0 = torch.where(x_any, xs, W).amin(dim=1)
    x1 = torch.where(x_any, xs + 1, 0).amax(dim=1)
    y0 = torch.where(y_any, ys, H).amin(dim=1)
    y1 = torch.where(y_any, ys + 1, 0).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(x_any.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
