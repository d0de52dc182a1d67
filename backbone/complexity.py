"""Parameter and multiply-add counts, the two columns of the paper's Table 1 and Table 6."""

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Table 1, "FLOPs" row (the paper counts multiply-adds), x10^9 at 224x224.
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
# Table 6, "# params", in millions.
PAPER_CIFAR_PARAMS_M = {
    "cifar_resnet20": 0.27,
    "cifar_resnet32": 0.46,
    "cifar_resnet44": 0.66,
    "cifar_resnet56": 0.85,
    "cifar_resnet110": 1.7,
    "cifar_resnet1202": 19.4,
}


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, *, image_size: int = 224) -> int:
    """Multiply-adds of one forward pass (convolutions and the classifier) for one image."""
    # a copy on the meta device: shapes flow through and nothing is computed, so even ResNet-152
    # counts in about a second, and the caller's model is left as it was
    meta_model = copy.deepcopy(model).eval().to("meta")
    with FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(1, 3, image_size, image_size, device="meta"))
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-add as two FLOPs
