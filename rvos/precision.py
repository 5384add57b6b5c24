"""Which reduced precision a device computes natively, and the autocast choices made from it.

bfloat16 autocast is a speed-up only where the hardware computes bfloat16: GPUs from Ampere
on, and CPUs whose oneDNN kernels take it natively (AVX512-BF16 / AMX, or AVX512 cores,
which oneDNN converts on the fly at little cost). On an AVX2-only CPU oneDNN falls back to
reference kernels: the grounding segmenter's training step takes 4.1 s under bfloat16
autocast against 0.25 s in float32 on such a CPU (AMD EPYC, AVX2, 2 threads). ``auto``
therefore means float32 there.
"""

from __future__ import annotations

import torch


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 at least as fast as float32 (see the module)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):        # a build without oneDNN
        return False


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype on ``device``, or None for float32 (no autocast).

    ``auto``: bfloat16 where the device computes it natively; float16 on GPUs without it
    (training pairs it with a GradScaler); None on CPUs without it. ``bfloat16`` or
    ``float16`` is used as asked, whatever the device."""
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if native_bfloat16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def backbone_dtype(requested: str, device: torch.device) -> str:
    """A frozen backbone's compute type, ``float32`` or ``bfloat16``, with ``auto`` resolved
    by :func:`native_bfloat16`."""
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return requested
