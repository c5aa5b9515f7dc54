"""Training loops (embedder, reranker, embedded-default bootstraps) on DeepSpeed engines."""
