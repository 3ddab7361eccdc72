"""Builds the C extension of the bit-packed 1-bit runtime; everything else is in pyproject.toml.

``-march=native``: the extension is compiled on the machine that runs it (``make install``), so
it may use that CPU's AVX2/POPCNT. Threads come from the extension's own pthread pool, which
never waits for a thread the OS has not scheduled. ``VISTREAM_BITCONV_CFLAGS`` replaces the
default flags: ``-O3`` alone gives a portable scalar build; adding ``-fopenmp`` runs the work
on torch's own OpenMP threads instead (no second pool; perhaps faster on an idle machine, not
measured; much slower on a shared one, see bitconv.c). ``-ffp-contract=off`` keeps the one
float multiply per output a plain IEEE multiply, as in torch (no fused multiply-add may change
a rounding).
"""

import os

from setuptools import Extension, setup

_FLAGS = os.environ.get("VISTREAM_BITCONV_CFLAGS", "-O3 -march=native").split()

setup(ext_modules=[Extension(
    "models.binary._bitconv",
    sources=["models/binary/csrc/bitconv.c"],
    extra_compile_args=[*_FLAGS, "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-pthread"],
    extra_link_args=["-pthread", *(["-fopenmp"] if "-fopenmp" in _FLAGS else [])],
)])
