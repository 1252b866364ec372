"""Build of the optional C extensions: ``jointsparse.nn._csparse`` (the sparse CPU kernels) and
``jointsparse.codecs._interleave`` (one step of decoding context-coded indices).

Everything else about the package is in pyproject.toml. The extension is optional: if it does not
compile (no C compiler, no Python headers), the package installs without it and the runtime layers
use their PyTorch products instead (``jointsparse.nn._compiled.UNAVAILABLE_REASON`` says why).

Flags: ``-march=native`` because the kernels are written for the machine that builds them (AVX and
FMA where it has them); set ``JOINTSPARSE_PORTABLE=1`` to build for the compiler's default target
(portable loops, no AVX intrinsics) e.g. for a wheel meant for other machines. OpenMP gives the
kernels their threads (``torch.get_num_threads()`` of them).
"""

import os
import sys

from setuptools import Extension, setup

compile_args = ["-O3", "-std=c11"]
link_args = []
if sys.platform != "win32":
    if os.environ.get("JOINTSPARSE_PORTABLE", "") not in ("1", "true", "yes"):
        compile_args.append("-march=native")
    if os.environ.get("JOINTSPARSE_OPENMP", "1") not in ("0", "false", "no"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")

setup(
    ext_modules=[
        Extension(
            "jointsparse.nn._csparse",
            sources=["jointsparse/nn/_csparse.c"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=True,
        ),
        # The sequential step of decoding context-coded indices (jointsparse/codecs/index_context.py);
        # without it that step runs in Python, ~100x slower.
        Extension("jointsparse.codecs._interleave", sources=["jointsparse/codecs/_interleave.c"], extra_compile_args=["-O3", "-std=c11"], optional=True),
    ]
)
