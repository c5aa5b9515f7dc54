"""unime-assets: the UniME-V2 multimodal-embedding pipeline as Dagster assets tracked in MLflow."""

__version__ = "0.1.0"

# faiss-cpu bundles an OpenBLAS that misdetects some CPUs (2-3x slower search); name the core type
# before anything imports faiss. No-op when already set or not on x86 Linux.
from unime_assets.openblas import pin_openblas_core  # noqa: E402

pin_openblas_core()
