"""unime-assets: the UniME-V2 multimodal-embedding pipeline as Dagster assets tracked in MLflow."""

__version__ = "0.1.0"
