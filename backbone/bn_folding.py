"""Inference-only rewrites that keep fp32 numerics: BN folded into the preceding conv, channels_last."""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BN into the conv before it (in place); modules declare their pairs in `conv_bn_pairs`.

    Only valid in eval mode: the folded model no longer tracks statistics.
    """
    if model.training:
        raise RuntimeError("fold_batchnorm needs an eval-mode model (call model.eval() first)")
    for module in model.modules():
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            bn = getattr(module, bn_name)
            if isinstance(bn, nn.Identity):
                continue  # already folded
            setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), bn))
            setattr(module, bn_name, nn.Identity())
    return model


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """eval() + BN folding + channels_last: the settings measured in bench/backbone.py."""
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
