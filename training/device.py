"""Device auto-selection and mixed precision: bf16 autocast on CUDA, fp32 on the CPU."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import random

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc mallopt parameters (malloc.h)
INT_MAX = 2**31 - 1  # mallopt takes a C int


def retain_freed_memory(trim_mb: int = 1024, top_pad_mb: int = 256) -> bool:
    """glibc: serve large tensors from the heap and keep freed memory there (no mmap, trim above `trim_mb`).

    By default glibc maps every allocation above 32 MB afresh and unmaps it on free, so a training step's
    logits (tens to hundreds of MB on a 12k-item catalogue) are page-faulted and zeroed by the kernel on every
    step. Process-wide; numbers are unchanged. Returns False where the C library is not glibc.
    Memory that earlier work in the process freed (e.g. the text encoder of a cold benchmark run, ~1.1 GB) is
    first given back to the OS (`malloc_trim`), so it does not stay resident under the training that follows.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc_trim(0)
    return all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_MAX, 0),
            (M_TRIM_THRESHOLD, min(trim_mb << 20, INT_MAX)),
            (M_TOP_PAD, min(top_pad_mb << 20, INT_MAX)),
        )
    )


def seed_everything(seed: int) -> None:
    """Seeded and deterministic on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
