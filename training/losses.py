"""The loss of one batch, per kind of run, as `training.loop.train_step` takes it: (the loss to minimise, the
detached metrics to log)."""

import torch
import torch.nn.functional as F

from detection.transform import batch_to_device


def classification_loss(
    net: torch.nn.Module, batch, *, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of a batch of (images, labels), with the batch's error rate as a detached metric."""
    images, labels = batch
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    logits = net(images)
    return F.cross_entropy(logits, labels), {"error": (logits.argmax(dim=1) != labels).float().mean()}


def detection_loss(net: torch.nn.Module, batch, *, device: torch.device, num_classes: int):
    """The detector's summed losses on a collated batch, with each loss as a detached metric."""
    images, targets = batch_to_device(*batch, device=device, num_classes=num_classes)
    losses, _ = net(images, targets, targets_prepared=True)
    return sum(losses.values()), losses
