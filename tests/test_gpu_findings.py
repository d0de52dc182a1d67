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


class FakeCuda:
    """torch.cuda's RNG functions over `count` simulated devices; like the real ones, a state for a
    device index past the visible count raises IndexError."""

    def __init__(self, monkeypatch, *, count: int, current: int) -> None:
        self.states = [torch.full((16,), index, dtype=torch.uint8) for index in range(count)]
        self.current = current
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)

    def index(self, device) -> int:
        index = self.current if device == "cuda" else torch.device("cuda", device).index
        if index >= len(self.states):
            raise IndexError(f"cuda device {index} of {len(self.states)}")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [state.clone() for state in self.states]

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self.index(device)] = state.clone()

    def set_rng_state_all(self, states) -> None:
        for index, state in enumerate(states):
            self.set_rng_state(state, index)


def test_rng_state_saved_with_two_gpus_restores_on_one(monkeypatch):
    from training.checkpoint import capture_rng_state, restore_rng_state

    saved = FakeCuda(monkeypatch, count=2, current=1)  # rank 1 of a 2-GPU run
    saved.states[1] = torch.full((16,), 7, dtype=torch.uint8)
    state = capture_rng_state()
    resumed = FakeCuda(monkeypatch, count=1, current=0)  # the same rank resumed where one GPU is visible
    restore_rng_state(state)
    assert torch.equal(resumed.states[0], torch.full((16,), 7, dtype=torch.uint8))


def test_rng_state_of_an_old_checkpoint_with_every_gpu_restores_on_one(monkeypatch):
    from training.checkpoint import capture_rng_state, restore_rng_state

    state = capture_rng_state()  # CPU-only here: no "cuda" entry
    state["cuda"] = [torch.full((16,), 3, dtype=torch.uint8), torch.full((16,), 4, dtype=torch.uint8)]
    resumed = FakeCuda(monkeypatch, count=1, current=0)
    restore_rng_state(state)
    assert torch.equal(resumed.states[0], torch.full((16,), 3, dtype=torch.uint8))
