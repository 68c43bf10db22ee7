"""The trainer's optimizer: detectron2's SGD with per-module learning-rate multipliers.

A module that sets ``lr_multiplier`` (``instfcn_d2.modeling.common.set_lr_multiplier``; FCIS's
``conv_new`` at 3x, as the official code's ``TRAIN.CONVNEW3``) trains its parameters at that many
times the rate detectron2 would give them. detectron2's ``build_optimizer`` has no per-module rate
(its ``overrides`` match a parameter's own name, e.g. ``bias``, not its module), so its parameter
groups are built as usual and those parameters are split into groups of their own.
"""
from typing import Any, Dict, List

import torch
from detectron2.solver import build_optimizer as d2_build_optimizer
from torch import nn

from ..modeling.common import LR_MULTIPLIER_ATTR

__all__ = ["lr_multipliers", "build_optimizer"]


def lr_multipliers(model: nn.Module) -> Dict[int, float]:
    """``id(parameter) -> factor`` for the parameters under a module with ``lr_multiplier`` (the
    innermost such module decides)."""
    factors: Dict[int, float] = {}
    for _, module in model.named_modules():  # parents come before their children
        factor = getattr(module, LR_MULTIPLIER_ATTR, None)
        if factor is not None:
            for p in module.parameters():
                factors[id(p)] = float(factor)
    return factors


def split_param_groups(groups: List[Dict[str, Any]], factors: Dict[int, float], base_lr: float) -> List[Dict[str, Any]]:
    """Each group's parameters with a factor other than 1 moved to a group of their own, its
    ``lr`` (or ``base_lr``) times the factor; every other setting of the group kept."""
    out = []
    for group in groups:
        by_factor: Dict[float, list] = {}
        for p in group["params"]:
            by_factor.setdefault(factors.get(id(p), 1.0), []).append(p)
        for factor, params in sorted(by_factor.items()):
            new = dict(group, params=params)
            if factor != 1.0:
                new["lr"] = group.get("lr", base_lr) * factor
            out.append(new)
    return out


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer for ``cfg`` (SGD, its weight-decay and bias settings, gradient
    clipping), with the parameters of modules that have an ``lr_multiplier`` at their own rate."""
    optimizer = d2_build_optimizer(cfg, model)
    factors = lr_multipliers(model)
    if not factors or all(f == 1.0 for f in factors.values()):
        return optimizer
    groups = split_param_groups(optimizer.param_groups, factors, cfg.SOLVER.BASE_LR)
    # a fresh optimizer of the same class (detectron2 may have wrapped SGD for gradient clipping)
    # over the split groups; its defaults are those detectron2 set
    return type(optimizer)(groups, **optimizer.defaults)
