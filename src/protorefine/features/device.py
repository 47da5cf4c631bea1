"""One device choice for every stage: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import functools
import logging
import shutil

import torch

from protorefine.errors import ProtorefineError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
log = logging.getLogger("protorefine")


def gpu_left_unused() -> str | None:
    """Why the CPU runs on a machine with an NVIDIA driver (a CPU-only torch, pip's CPU
    wheel: the run works, many times slower than it could), or None."""
    if torch.version.cuda is None and shutil.which("nvidia-smi"):
        return (
            f"an NVIDIA driver is installed but this torch ({torch.__version__}) is a CPU-only "
            "build; install a CUDA build for speed (README, 'GPU')"
        )
    return None


@functools.cache
def _warn_cpu_build_beside_gpu() -> None:
    """Say :func:`gpu_left_unused` once per process when ``auto`` falls back to the CPU."""
    reason = gpu_left_unused()
    if reason:
        log.warning(f"protorefine: running on the CPU: {reason}")


def _mps_available() -> bool:
    """True when PyTorch can use Apple's Metal backend."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:i]|mps`` into a usable ``torch.device``, or say why it cannot be used."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        _warn_cpu_build_beside_gpu()
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise ProtorefineError("device 'mps': Apple MPS is not available on this machine")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if torch.version.cuda is None:  # the usual cause on a GPU desktop: the CPU wheel
            raise ProtorefineError(
                f"device {name!r}: this torch ({torch.__version__}) is a CPU-only build; install "
                "a CUDA build (README, 'GPU') or use --device cpu or auto"
            )
        if not torch.cuda.is_available():
            raise ProtorefineError(
                f"device {name!r}: no CUDA GPU answers (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda}; check the NVIDIA driver with nvidia-smi); use --device cpu "
                "or auto"
            )
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise ProtorefineError(f"device {name!r}: not a valid CUDA device name") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ProtorefineError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    raise ProtorefineError(f"device {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
