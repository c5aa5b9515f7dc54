"""MLflow pyfunc models, so a registered version can be loaded and used without this pipeline.

Registered as models-from-code (`pyfunc_model.py` is the model's code file; its `model_config` names
the task): nothing is pickled, so loading a version runs this package's code, never code stored in
an artifact. Embedder: rows (text, image) -> L2-normalised vectors. Reranker: rows (query_text,
query_image, cand_text, cand_image) -> P(Yes) with the judge formula. Images are paths relative to
the `image_root` param and must resolve inside it.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")  # what `log_model(python_model=...)` gets
TASKS = ("embedder", "reranker")


def _frame(model_input) -> pd.DataFrame:
    return model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)


class UnimeModel(mlflow.pyfunc.PythonModel):
    """The embedder or the reranker (`model_config["task"]`), loaded from the `checkpoint` artifact."""

    # Inputs and outputs are declared by the signature logged with the model; this MLflow class flag skips its
    # type-hint wrapper of predict() (a pass-through without hints) and the warning asking for hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from unime_assets.models.loading import load_model

        self.task = (context.model_config or {}).get("task", "")
        if self.task not in TASKS:
            raise ValueError(f"model_config task must be one of {TASKS}, got {self.task!r}")
        # a registered model never runs the checkpoint's own code (trust_remote_code off)
        self.lm = load_model(context.artifacts["checkpoint"], role=f"registered {self.task}", trust_remote_code=False)
        self.lm.model.eval()

    def predict(self, context, model_input, params=None):
        df = _frame(model_input)
        return self._embed(df, params) if self.task == "embedder" else self._rerank(df, params)

    def _embed(self, df: pd.DataFrame, params) -> np.ndarray:
        from unime_assets.models.encoding import ImageLoader, Item, encode_items

        if "text" not in df:
            raise ValueError("embedder input needs a `text` column (and optionally `image`)")
        images = df["image"].fillna("").tolist() if "image" in df else [""] * len(df)
        root = (params or {}).get("image_root", "")
        if any(images) and not root:
            raise ValueError("pass params={'image_root': ...}: image paths are resolved inside that root")
        items = [Item(str(t), str(i)) for t, i in zip(df["text"], images, strict=True)]
        emb = encode_items(self.lm.model, self.lm.processor, items, ImageLoader(root or "."), self.lm.image_token,
                           progress=False)  # fmt: skip
        return np.asarray(emb)

    def _rerank(self, df: pd.DataFrame, params) -> np.ndarray:
        from unime_assets.judging import score_pairs
        from unime_assets.models.encoding import ImageLoader, Item

        df = df.fillna("")
        missing = {"query_text", "cand_text"} - set(df.columns)
        if missing:
            raise ValueError(f"reranker input is missing columns {sorted(missing)}")
        root = (params or {}).get("image_root", ".")
        pairs = [
            (Item(str(r.query_text), str(getattr(r, "query_image", ""))),
             Item(str(r.cand_text), str(getattr(r, "cand_image", ""))))
            for r in df.itertuples()
        ]  # fmt: skip
        return score_pairs(self.lm.model, self.lm.processor, pairs, ImageLoader(root), progress=False)
