"""Inference-only rewrites of a detector that keep its fp32 detections (measured in bench/detector.py):
BN folding, conv+ReLU(+add) fusion (detection/fusion.py), channels_last convs, optional bf16 autocast.

BN is folded into the preceding convolution wherever a module declares the pair (the backbone's
blocks and the C4 head's res5, via `conv_bn_pairs`) or a Sequential holds conv then BN (torchvision's
`Conv2dNormActivation` in the v2 FPN and box head). FrozenBatchNorm2d is two full passes over every
activation (multiply, add), so folding it saves memory traffic as well as arithmetic.
"""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import FrozenBatchNorm2d

from backbone.bn_folding import fold_batchnorm
from detection.fusion import fuse_conv_relu_sequences, fuse_fpn_and_rpn_head, fuse_resnet_blocks

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def fold_sequential_batchnorm(model: nn.Module) -> nn.Module:
    """Fold BN that directly follows a Conv2d inside any nn.Sequential (in place, eval mode only)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, NORMS):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


def optimize_detector(detector: nn.Module, *, fold_bn: bool, fuse: bool, channels_last: bool, bf16: bool) -> nn.Module:
    detector.eval()
    if fold_bn:
        fold_batchnorm(detector)
        fold_sequential_batchnorm(detector)
        detector.optimized = True
    if fuse:
        if not fold_bn:
            raise ValueError("fuse=True needs fold_bn=True (ReLU and add fuse into a conv with no BN after it)")
        fuse_resnet_blocks(detector)
        fuse_conv_relu_sequences(detector)
        fuse_fpn_and_rpn_head(detector)
    if channels_last:
        # Only the conv weights: a conv whose weight is channels_last produces channels_last output,
        # so the whole backbone, FPN and RPN head run NHWC without converting the input batch.
        for module in detector.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    detector.inference_autocast_dtype = torch.bfloat16 if bf16 else None
    return detector
