"""The learning rate at every iteration: warm-up, /10 at fixed milestones, and /10 on plateau.

One small stateful object instead of chained torch schedulers, because the paper's CIFAR warm-up
ends on a condition (training error below 80%) rather than at a fixed iteration, and its ImageNet
schedule divides on a plateau of the validation error. Its state goes into every checkpoint.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch

WARMUP_METHODS = ("constant", "linear")


class LRSchedule:
    """lr(iteration) = base_lr * warmup factor * gamma ** (milestones passed + plateau drops)."""

    def __init__(
        self,
        *,
        base_lr: float,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_iterations: int = 0,
        warmup_factor: float = 1.0,
        warmup_method: str = "constant",
        plateau_patience: int = 0,
        plateau_threshold: float = 1e-3,
    ) -> None:
        """
        Args:
            milestones: iterations at which the rate is multiplied by `gamma`.
            warmup_iterations: length of the warm-up (an upper bound when `end_warmup` ends it early).
            warmup_factor: lr multiplier at the start of the warm-up.
            warmup_method: "constant" (the paper's 0.01-then-0.1 for ResNet-110) or "linear" (ramps
                from `warmup_factor` to 1, as Goyal et al. and detectron2).
            plateau_patience: evaluations without improvement before dividing; 0 disables.
        """
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.base_lr = base_lr
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = gamma
        self.warmup_iterations = warmup_iterations
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        self.plateau_patience = plateau_patience
        self.plateau_threshold = plateau_threshold
        self.warmup_ended_at: int | None = None
        self.plateau_drops = 0
        self.best_metric = math.inf
        self.evaluations_without_improvement = 0

    def in_warmup(self, iteration: int) -> bool:
        return iteration < self.warmup_iterations and self.warmup_ended_at is None

    def end_warmup(self, iteration: int) -> None:
        """End the warm-up now (the CIFAR recipe calls this once training error drops below 80%)."""
        if self.in_warmup(iteration):
            self.warmup_ended_at = iteration

    def lr_at(self, iteration: int) -> float:
        factor = 1.0
        if self.in_warmup(iteration):
            if self.warmup_method == "constant":
                factor = self.warmup_factor
            else:
                alpha = iteration / self.warmup_iterations
                factor = self.warmup_factor * (1 - alpha) + alpha
        decays = sum(1 for milestone in self.milestones if iteration >= milestone) + self.plateau_drops
        return self.base_lr * factor * self.gamma**decays

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's lr for this iteration; returns it."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def observe(self, metric: float) -> bool:
        """Report a validation error (lower is better); returns True when it triggers a plateau drop."""
        if self.plateau_patience <= 0:
            return False
        if metric < self.best_metric - self.plateau_threshold:
            self.best_metric = metric
            self.evaluations_without_improvement = 0
            return False
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement >= self.plateau_patience:
            self.plateau_drops += 1
            self.evaluations_without_improvement = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_ended_at": self.warmup_ended_at,
            "plateau_drops": self.plateau_drops,
            "best_metric": self.best_metric,
            "evaluations_without_improvement": self.evaluations_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup_ended_at = state["warmup_ended_at"]
        self.plateau_drops = state["plateau_drops"]
        self.best_metric = state["best_metric"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
