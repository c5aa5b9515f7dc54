"""Stages 4 and 5 of UniME-V2: training the embedder and the reranker.

Modules: `loop` (the shared DeepSpeed loop: seeded data order, resumable checkpoints, export),
`embedder` (judge-score alignment and the InfoNCE ablations; the retriever bootstrap), `sft` (chat
SFT on assistant tokens: the reranker and the judge bootstrap), `gradcache` (GradCache steps),
`engine` (DeepSpeed engine, distributed helpers), `data` (training set and example builders),
`launch` (the `torchrun` / `deepspeed` entry point, streaming back over Dagster Pipes).
The losses themselves are in `unime_assets.losses`.

Public functions: `train_embedder`, `train_sft`, `train_retriever_infonce`, `embedder_loss`,
`build_training_set`, `read_result`.
"""
