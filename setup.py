"""Maps the repository's folders into the one ``vistream`` namespace and builds the C extension
of the bit-packed 1-bit runtime; everything else is in pyproject.toml.

The product's layout keeps ``pipeline/``, ``stages/`` and ``models/`` at the repository root;
``vistream/`` holds the tools (CLI, benchmarks) and a link to each of the three folders, so they
install and import as ``vistream.pipeline``, ``vistream.stages`` and ``vistream.models``, and
nothing but ``vistream`` lands at the top level of site-packages (tests/test_packaging.py builds
the wheel and checks). One tree, seen the same way by the install, an editable install, pytest
and import-linter (which walks the package's folder and follows the links).

No ``-march``: the extension is built for any x86-64 CPU and carries three kernels
(models/binary/csrc/bitconv_kern.h compiled as portable C, for AVX2 and for AVX-512 through
``#pragma GCC target``); it picks the widest one the running CPU offers when it is loaded
(cpuid), and ``VISTREAM_KERNEL=avx512|avx2|portable`` forces one. So the same build is right
for ``make install``, a wheel and the docker image, whatever CPU compiled it. ``-fopenmp``: the
kernel runs on torch's own OpenMP threads
(torch's bundled libgomp is the one loaded, so there is one thread team, not two competing
ones); on an idle 2-core machine this made the 2-thread 1-bit ResNet-18 ~30% faster than the
extension's own pthread pool, which remains available with
``VISTREAM_BITCONV_CFLAGS="-O3"``: that pool never waits for a thread the OS has
not scheduled, so it degrades far less on a CPU shared with other busy processes, where an
OpenMP barrier can wait for a descheduled thread (docs/binary-runtime.md). ``-ffp-contract=off`` keeps the one
float multiply per output a plain IEEE multiply, as in torch (no fused multiply-add may change
a rounding).
"""

import os

from setuptools import Extension, find_namespace_packages, setup

_NOT_PACKAGES = ["*__pycache__*", "*csrc*"]

_FLAGS = os.environ.get("VISTREAM_BITCONV_CFLAGS", "-O3 -fopenmp").split()

setup(
    # vistream/pipeline, vistream/stages and vistream/models are links to the root folders:
    # package discovery follows them, and the wheel holds real copies.
    packages=["vistream", *(f"vistream.{p}" for p in find_namespace_packages("vistream",
                                                                            exclude=_NOT_PACKAGES))],
    ext_modules=[Extension(
        "vistream.models.binary._bitconv",
        sources=["models/binary/csrc/bitconv.c"],
        depends=["models/binary/csrc/bitconv_kern.h"],
        extra_compile_args=[*_FLAGS, "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-pthread"],
        extra_link_args=["-pthread", *(["-fopenmp"] if "-fopenmp" in _FLAGS else [])],
    )],
)
