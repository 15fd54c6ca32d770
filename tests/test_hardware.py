"""The CPU allocator keeps freed activation memory: a second batch is not page-faulted anew."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from leanvision.hardware import choose_hardware

# A fresh interpreter, so the heap holds nothing from earlier tests: page faults in each of seven
# rounds of a forward pass's worth of large tensors (48, 24 and 36 MB, freed together), after
# three rounds of warm-up. glibc maps anything above 32 MB afresh by default; tuned, it reuses
# it. The median round is compared: the kernel may reclaim kept pages now and then (a round or
# two then faults them in again), which is not what the tuning is about.
PROBE = """
import resource, sys, torch
from leanvision.hardware import keep_freed_memory
if sys.argv[1] == "tuned":
    keep_freed_memory()
    keep_freed_memory()  # idempotent
def step():
    tensors = [torch.empty(n * 2**20 // 4).fill_(1.0) for n in (48, 24, 36)]
    del tensors
for _ in range(3):
    step()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[3])
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's allocator only")
def test_freed_large_tensors_are_reused_not_faulted_in_again():
    assert _faults("default") > 10_000  # 27,648 pages a round, the cost the tuning removes
    assert _faults("tuned") < 1_000


def test_choose_hardware_on_cpu_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr("leanvision.hardware.cpu_has_bf16", lambda: False)
    hw = choose_hardware("cpu")
    assert hw.device.type == "cpu" and hw.precision == "fp32" and hw.channels_last


def test_inference_batches_are_capped_in_pixels_not_images():
    from leanvision.hardware import pixel_capped_batch

    assert pixel_capped_batch(256, 32, 32) == 256  # thumbnails: unchanged
    assert pixel_capped_batch(256, 224, 224) == 20
    assert pixel_capped_batch(500, 4000, 3000) == 1
