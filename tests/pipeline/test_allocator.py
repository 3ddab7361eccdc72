"""The allocator setting the ``vistream`` command applies at start: measured by page faults,
which the kernel counts exactly (no timing)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

PROBE = """
import resource, sys
import torch
from vistream.pipeline.allocator import retain_freed_memory
tuned = retain_freed_memory() if sys.argv[1] == "tune" else False
torch.set_num_threads(1)
net = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Conv2d(16, 16, 3, padding=1),
                                                          torch.nn.ReLU())]).eval()
x = torch.randn(16, 16, 32, 32)  # 1 MiB activations
with torch.inference_mode():
    net(x)  # warm up: the first pass faults its blocks in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        net(x)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


def test_freed_activations_are_reused_instead_of_faulted_in_again():
    tuned, faults_tuned = _faults("tune")
    _, faults_default = _faults("default")
    assert tuned == "True"
    # default glibc maps and unmaps each conv output: ~256 faults per tensor (measured 54k)
    assert faults_default > 20 * 4 * 100
    assert faults_tuned < faults_default / 20


def test_tuning_can_be_switched_off():
    tuned, faults = _faults("tune", VISTREAM_MALLOC_TUNING="0")
    assert tuned == "False"
    assert faults > 20 * 4 * 100
