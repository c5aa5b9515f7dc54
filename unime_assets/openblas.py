"""Name the CPU core for OpenBLAS before faiss loads its bundled copy.

faiss-cpu 1.15.1 wheels ship OpenBLAS 0.3.15, which does not recognise some recent or virtualised
Xeons (this project's machine reports "Intel(R) Xeon(R) Processor") and falls back to its generic
Prescott kernels; numpy's newer OpenBLAS picks SkylakeX on the same CPU. Exact FAISS search was
2-3x slower that way (measured with benchmarks/candidate_pool.py). OpenBLAS reads
`OPENBLAS_CORETYPE` once, when the library loads, so this must run before the first `import faiss`.
"""

from __future__ import annotations

import os
import sys

_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin_openblas_core() -> str | None:
    """Set OPENBLAS_CORETYPE from the CPU flags; no-op if set already, faiss loaded, or not x86 Linux."""
    if "OPENBLAS_CORETYPE" in os.environ or "faiss" in sys.modules or not sys.platform.startswith("linux"):
        return None
    flags = cpu_flags()
    core = "SkylakeX" if flags >= _AVX512 else "Haswell" if flags >= {"avx2", "fma"} else None
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    return core
