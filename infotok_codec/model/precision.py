"""Which arithmetic the network runs in: float32, or bf16 autocast where the hardware has it.

bf16 halves the bytes every activation moves and, on CPUs with AVX512-BF16 (or AMX) and on CUDA,
doubles the matmul and convolution rate. Autocast keeps the norms and reductions in float32, and
the tokenizer projects to codes and quantizes in float32 (`Tokenizer.code_inputs`), so only the
network's activations are rounded. The stream is exact either way: its indices are integers and
the coder is integer arithmetic; what bf16 changes is which indices an encode picks and the
pixels a decode writes (`benchmarks/tokenizer_quality.py --precision` and `benchmarks/speed_large.py
--precision` measure both).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (CUDA, or a CPU with oneDNN's bf16 kernels)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(requested: bool | None, device: torch.device) -> bool:
    """bf16 as requested (True/False), else (None) where `device` runs it natively."""
    return native_bf16(device) if requested is None else requested


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[object]:
    """The autocast context for `bf16` on `device` (a no-op context when False)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def float32(device: torch.device) -> AbstractContextManager[object]:
    """A context that runs float32 inputs in float32 even inside `autocast`. (Autocast knows
    only CPU and CUDA devices; on others, the meta device that counts FLOPs among them, there is
    nothing to switch off.)"""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()
