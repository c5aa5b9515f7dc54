"""The code file of the registered UniME-V2 models (MLflow models-from-code; see training/pyfunc.py).

MLflow copies this file into each registered version and runs it at load time; the task (embedder
or reranker) comes from the version's `model_config`.
"""

from mlflow.models import set_model

from unime_assets.training.pyfunc import UnimeModel

set_model(UnimeModel())
