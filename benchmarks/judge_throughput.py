"""Judge throughput: prefix-shared engine vs the naive way (one pair per full forward pass).

Builds a tiny random Qwen2.5-VL judge (models.tiny, same code path as a real checkpoint) and
synthetic queries and candidates with images of several sizes in a temp dir; each query gets its
positive plus 50 candidates drawn from a shared pool, as in the candidate_pool asset. Prints pairs/s
of the naive way, of the batched `score_pairs` (no prefix sharing) and of `PrefixSharedJudge`,
the speed-up, and the largest score difference from the naive scores (fails above 1e-4).

    .venv/bin/python benchmarks/judge_throughput.py [--queries 8] [--candidates 50] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from unime_assets.embedded import TOKENIZER_PHRASES, tokenizer_corpus  # noqa: E402
from unime_assets.judging import (  # noqa: E402
    PAIRWISE_PROMPT,
    PrefixSharedJudge,  # noqa: E402
    score_pairs,
    score_pairs_plain,
)
from unime_assets.models.encoding import ImageLoader, Item  # noqa: E402
from unime_assets.models.loading import load_model  # noqa: E402
from unime_assets.models.tiny import build_tiny_checkpoint, build_tokenizer  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre"]


def caption(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 4))
    objs = [f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} in the {rng.choice(PLACES)}" for _ in range(n)]
    return "A picture of " + " and ".join(objs) + "."


def build_world(
    root: Path, n_queries: int, n_cands: int, pool_size: int, *, phrases: bool = False,
    max_pixels: int = 224 * 224, seed: int = 0,
) -> tuple[Path, ImageLoader, list[tuple[Item, list[Item]]]]:  # fmt: skip
    """Tiny judge + image folder + (query, [positive, *candidates]) groups with mixed modalities.

    By default the prompt is tokenized word by word (~60 tokens, like a real Qwen tokenizer) rather than
    as the demo's single phrase tokens, and images give up to 64 tokens, so the prefix/suffix token mix
    is closer to a real judge's; `phrases=True, max_pixels=112*112` is the embedded demo's judge.
    """
    rng = np.random.default_rng(seed)
    texts = [caption(rng) for _ in range(400)]
    corpus = tokenizer_corpus(texts) + [PAIRWISE_PROMPT, "Query: Candidate:"] * 50
    tok = build_tokenizer(corpus, phrases=TOKENIZER_PHRASES if phrases else ())
    judge = build_tiny_checkpoint(root / "judge", tok, family="qwen2_5_vl", max_pixels=max_pixels, seed=seed)
    img_root = root / "images"
    img_root.mkdir()
    sizes = [(56, 56), (168, 112), (224, 224), (128, 192), (200, 140)]
    n_images = pool_size + n_queries
    for i in range(n_images):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_root / f"img_{i}.png")
    pool = []
    for i in range(pool_size):  # a third each: image only, text only, image + text
        kind = i % 3
        text = "" if kind == 0 else (texts[i] if kind == 1 else "<|image_1|>\nRepresent the given image.")
        pool.append(Item(text, f"img_{i}.png" if kind != 1 else ""))
    groups = []
    for q in range(n_queries):
        if q % 2 == 0:  # image + instruction queries (VQA / classification style)
            query = Item("<|image_1|>\nRepresent the given image with the following question: "
                         f"what is in the {rng.choice(PLACES)}?", f"img_{pool_size + q}.png")  # fmt: skip
        else:  # text queries (t2i retrieval style)
            query = Item(f"Find me an everyday image that matches the given caption: {caption(rng)}")
        picks = rng.choice(pool_size, size=n_cands + 1, replace=False)
        groups.append((query, [pool[int(j)] for j in picks]))
    return judge, ImageLoader(img_root), groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--pool", type=int, default=150, help="distinct candidates the queries draw from")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--phrases", action="store_true", help="the demo tokenizer: the prompt is one token")
    ap.add_argument("--max-pixels", type=int, default=224 * 224, help="judge image processor's max_pixels")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 keeps numbers steady on a shared machine (0: torch's default)")  # fmt: skip
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        judge_dir, images, groups = build_world(
            Path(tmp),
            args.queries,
            args.candidates,
            args.pool,
            phrases=args.phrases,
            max_pixels=args.max_pixels,
        )
        lm = load_model(judge_dir, role="judge")
        pairs = [(q, c) for q, cands in groups for c in cands]
        print(f"device {lm.device}, torch threads {torch.get_num_threads()}, {len(groups)} queries x "
              f"{len(groups[0][1])} pairs = {len(pairs)} pairs, {args.pool} pool candidates")  # fmt: skip

        warm = [(groups[0][0], groups[0][1][:4])]  # first calls pay one-off costs in every path
        score_pairs_plain(lm.model, lm.processor, [(warm[0][0], c) for c in warm[0][1]], images)
        PrefixSharedJudge(lm.model, lm.processor, images).score_groups(warm)

        def timed(fn):  # wall and process CPU seconds: on a shared machine CPU time is the steadier one
            w, c = time.perf_counter(), time.process_time()
            out = fn()
            return out, time.perf_counter() - w, time.process_time() - c

        naive, t_naive, c_naive = timed(lambda: score_pairs_plain(lm.model, lm.processor, pairs, images))
        batched, t_batched, c_batched = timed(
            lambda: score_pairs(
                lm.model, lm.processor, pairs, images, batch_size=args.batch_size, progress=False
            )
        )
        engine = PrefixSharedJudge(lm.model, lm.processor, images, batch_size=args.batch_size)
        ours, t_ours, c_ours = timed(lambda: np.concatenate(engine.score_groups(groups)))

    n = len(pairs)
    diff, diff_batched = float(np.abs(ours - naive).max()), float(np.abs(batched - naive).max())
    rows = [("naive (1 pair / full forward)", t_naive, c_naive, 0.0),
            ("batched score_pairs", t_batched, c_batched, diff_batched),
            ("prefix-shared engine", t_ours, c_ours, diff)]  # fmt: skip
    print(f"{'path':30s} {'wall s':>7s} {'pairs/s':>8s} {'ms/pair':>8s} {'cpu s':>7s} {'cpu ms/pair':>11s} "
          f"{'max|diff|':>9s}")  # fmt: skip
    for name, t, c, d in rows:
        print(f"{name:30s} {t:7.2f} {n / t:8.1f} {1000 * t / n:8.2f} {c:7.2f} {1000 * c / n:11.2f} {d:9.2e}")
    print(
        f"engine: {engine.forwards} LM forward passes, {engine.cache.encoded} images through the vision tower"
    )
    print(f"RESULT naive {n / t_naive:.1f} pairs/s, ours {n / t_ours:.1f} pairs/s, ratio {t_naive / t_ours:.1f}x "
          f"(CPU-time ratio {c_naive / c_ours:.1f}x), max abs diff {diff:.2e}")  # fmt: skip
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
