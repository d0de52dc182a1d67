"""The torch device a command runs on, from a user's setting ("auto", "cpu", "cuda", "cuda:1", ...)."""

import torch


def resolve_device(choice: str, *, setting: str, error: type[Exception] = ValueError) -> torch.device:
    """"auto" is CUDA when torch sees it, else the CPU; anything else must name a device that exists here.

    `setting` is how the user gave the choice ("--device ", "DEVICE="), so that a bad one is named in
    their own words; `error` is the exception type the command reports user errors with.
    """
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as cause:
        raise error(f"{setting}{choice!r} is not a torch device: {cause}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{setting}{choice!r} but torch sees no CUDA device (use {setting}cpu or auto)")
    return device
