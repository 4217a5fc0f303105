"""Where PyTorch runs: the one place that decides.

``get_device()`` picks CUDA when a GPU is present, then Apple's MPS, then the
CPU. Set the environment variable ``COURSE_DEVICE`` to force a choice
(``COURSE_DEVICE=cpu`` makes a GPU machine behave like a student's laptop,
which is how the stored notebook outputs are produced).
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "COURSE_DEVICE"


def get_device() -> torch.device:
    """Return ``torch.device('cuda' | 'mps' | 'cpu')``, honouring ``COURSE_DEVICE``."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in ("cpu", "cuda", "mps"):
            raise ValueError(
                f"{ENV_VAR}={forced!r} is not a device; use cpu, cuda or mps "
                f"(or unset it to pick automatically)")
        if forced == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{ENV_VAR}=cuda but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}); unset it to fall back to the CPU")
        if forced == "mps" and not _mps_available():
            raise ValueError(f"{ENV_VAR}=mps but torch.backends.mps.is_available() is False (MPS needs "
                             f"an Apple-silicon Mac; torch {torch.__version__}); unset it to fall back to the CPU")
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    """Apple's Metal backend: present in this torch build and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def describe(device: torch.device | None = None) -> str:
    """A one-line description for notebook output, e.g. ``'cpu (2 threads)'``."""
    device = device or get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
