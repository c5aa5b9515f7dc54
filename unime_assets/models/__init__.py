"""The MLLM backbones: loading local checkpoints, building tiny ones, processors, and embedding.

Modules: `loading` (`load_model`: a local checkpoint through transformers' generic image-text-to-text
class, device and dtype picked for the machine), `processors` (torchvision-free Qwen / InternVL
processors), `families` (what differs between model families: processor, image placeholder, judge
engine, tiny chat template and tokens), `encoding` (`Item`, the last-token L2-normalised embedding,
batched encoding), `tiny` (the embedded default's tiny Qwen2-VL / Qwen2.5-VL / InternVL3 checkpoints
and tokenizer).
"""
