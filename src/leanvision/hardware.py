"""Device, precision and memory layout chosen for the hardware at hand (and overridable)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def needs_grad_scaler(self) -> bool:
        # bf16 has fp32's exponent range; only fp16 underflows without loss scaling.
        return self.amp_dtype is torch.float16


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX); emulated bf16 is
    slower than fp32, so without it we stay in fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def keep_freed_memory() -> None:
    """Ask glibc to serve large tensors from its heap and keep freed memory for reuse.

    By default glibc maps every allocation above 32 MB afresh and unmaps it on free, so each
    batch of 224 px activations is page-faulted in from zero again: on a 2-core CPU the kernel's
    page clearing took more time than the convolutions (bench/results/transfer.json records
    the frozen pass's speed). Heap allocations are reused instead. Idempotent; a no-op off
    glibc."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or platform.system() != "Linux":
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
# Inference batches are capped in pixels, not images: a batch of 224 px photos holds ~12x the
# activations of one of 64 px images, so a fixed image count sized for thumbnails runs a photo
# run out of memory.
MAX_BATCH_PIXELS = 256 * 64 * 64


def pixel_capped_batch(batch: int, height: int, width: int) -> int:
    """`batch`, lowered so that a batch holds at most MAX_BATCH_PIXELS pixels (at least 1)."""
    return max(1, min(batch, MAX_BATCH_PIXELS // max(1, height * width)))
_ALLOCATOR_TUNED = False


def choose_hardware(device: str = "auto", precision: str = "auto",
                    channels_last: bool | None = None) -> Hardware:
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                          "use --device cpu")
    else:
        dev = torch.device(device)

    if precision == "auto":
        if dev.type == "cuda":
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp = torch.bfloat16 if cpu_has_bf16() else None
    elif precision == "fp32":
        amp = None
    elif precision == "bf16":
        amp = torch.bfloat16
    elif precision == "fp16":
        if dev.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
        amp = torch.float16
    else:
        raise ConfigError(f"--precision {precision!r} is not one of auto, fp32, bf16, fp16")

    if dev.type == "cpu":
        keep_freed_memory()
    # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
    layout = True if channels_last is None else channels_last
    return Hardware(device=dev, amp_dtype=amp, channels_last=layout)


def describe_machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def world_rank_is_main() -> bool:
    """Rank 0 of a multi-process job (training/distributed.py), or a plain process; known from
    the launcher's environment before joining. Here, below tracking, which asks it too."""
    return int(os.environ.get("RANK", "0")) == 0


def physical_cores() -> int:
    """Cores this process may use, counting SMT siblings once (a second hyper-thread adds
    little to convolution kernels and makes latency noisier)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = allowed if allowed is not None else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))
