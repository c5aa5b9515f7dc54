"""The data the method reads and writes, in the real formats: MMEB, the released judge scores, zero-shot sets.

Modules: `catalog` (the 36 MMEB eval and 20 train subsets with meta-task and IND/OOD, and the
synthetic ones), `mmeb` (`read_train_subset`, `read_eval_subset`: the parquet files byte for byte,
with provenance), `validation` (row rules naming file, row and field; fail or quarantine),
`unime_scores` (the official score JSON: `read`, `write`, conversion to and from our tables),
`candidates` (the global pool's unique targets), `zeroshot` (Flickr30K, COCO, ShareGPT4V, Urban1K,
SugarCrepe), `images` (image paths kept inside their root), `synthetic` (the embedded default's
dataset), `errors`.
"""
