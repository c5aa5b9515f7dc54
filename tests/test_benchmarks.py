"""The benchmark scripts run, print their RESULT line and fail when the compared paths disagree.

Toy sizes only (the benchmarks themselves are not timed tests); the figures come from running the
scripts as README's performance section says.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _result_line(out: str, name: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(f"RESULT {name}: ratio ")]
    assert lines, f"no RESULT {name} line in:\n{out[-2000:]}"
    return lines[-1]


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


def test_candidate_pool_smoke_run():
    res = _run(str(BENCH / "candidate_pool.py"), "--smoke")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    line = _result_line(res.stdout, "candidate_pool")
    assert "default" in line and "chunked torch" in line and "CPU time" in line
    assert "| identical" in res.stdout and "MISMATCH" not in res.stdout


def test_candidate_pool_agreement_check_can_fail(bench_modules):
    from candidate_pool import agree, torch_chunked
    from pool_data import clustered_embeddings

    q, c, pos = clustered_embeddings(40, 500, 32)
    pos_sim = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    ids = torch_chunked(q, c, pos_sim, pos)
    assert agree(q, c, pos, ids, ids.copy()) == (40, 0)
    wrong = ids.copy()
    wrong[3, 0] = pos[3]  # the positive itself is never a candidate
    with pytest.raises(AssertionError, match="query 3"):
        agree(q, c, pos, ids, wrong)
    # a copy of the positive elsewhere in the pool (at δ) taken by one search pushes its 50th out: a tie
    j = int(np.nonzero((ids >= 0).all(1))[0][0])
    twin = int(np.setdiff1d(np.arange(len(c)), [*ids[j], pos[j]])[0])
    c2 = c.copy()
    c2[twin] = c[pos[j]]
    shifted = ids.copy()
    shifted[j] = [twin, *ids[j][:-1]]
    assert agree(q, c2, pos, ids, shifted) == (39, 1)
    unrelated = int(np.setdiff1d(np.arange(len(c)), [*ids[j], pos[j], twin])[-1])
    replaced = ids.copy()
    replaced[j, 0] = unrelated  # the best candidate swapped for one far below the 50th
    with pytest.raises(AssertionError, match=f"query {j}"):
        agree(q, c2, pos, ids, replaced)


def test_judge_throughput_smoke_run():
    res = _run(str(BENCH / "judge_throughput.py"), "--quick", "--size", "smoke", "--subsets", "ImageNet_1K", "CIRR")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    line = _result_line(res.stdout, "judge")
    assert "vs batched HF" in line and "MISMATCH" not in res.stdout
    for path in ("ours", "batched", "naive"):
        assert f"| ImageNet_1K | 50,000 | {path} |" in res.stdout


def test_read_validate_smoke_run():
    res = _run(str(BENCH / "read_validate.py"), "--rows", "1200", "--subsets", "2", "--images", "60")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "ours vs row-wise with a path cache" in _result_line(res.stdout, "read_validate")


def test_read_validate_report_fails_on_different_findings(bench_modules):
    from read_validate import VARIANTS, report

    base = {"rows": 10, "read_s": 0.1, "validate_s": 0.1, "cpu_s": 0.2, "findings": 1, "clean": 9,
            "findings_digest": "a", "peak_mb": 1.0, "base_mb": 0.5}  # fmt: skip
    results = [{**base, "variant": v} for v in VARIANTS]
    assert report(results)
    naive = next(r for r in results if r["variant"].startswith("naive"))
    naive["findings_digest"] = "b"  # same counts, another row flagged
    assert not report(results)


def test_gradcache_check_needs_the_peak_reset_and_equal_training(bench_modules):
    from gradcache_memory import check

    def res(chunk, batch, train, reset=True):
        return {"chunk": chunk, "batch": batch, "train": train, "peak_reset": reset}

    same = [res(0, 8, [2.0, 1.0, 1.9, 0.9]), res(2, 8, [2.0, 1.0, 1.9, 0.9])]
    assert check(same, [8], 2) == []
    assert "peak-RSS reset" in check([res(0, 8, [2.0] * 4, reset=False), res(2, 8, [2.0] * 4)], [8], 2)[0]
    assert "differs" in check([res(0, 8, [2.0, 1.0, 1.9, 0.9]), res(2, 8, [2.0, 1.1, 1.9, 0.9])], [8], 2)[0]


def test_gpu_acceptance_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_acceptance.sh")]).returncode == 0


@pytest.mark.slow
def test_gpu_acceptance_cpu_pieces_run(embedded_home):
    """Every check's code path on the CPU at toy sizes; vLLM and FAISS GPU report why they were skipped."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_acceptance.sh"), "--cpu-smoke", "--home",
                          str(embedded_home)], cwd=ROOT, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "RESULT gpu_acceptance: ratio " in out and "0 check(s) failed" in out
    for check in ("matmul peak bf16", "judge smoke x1 layers, prefix-shared", "FAISS flat CPU",
                  "DeepSpeed ZeRO-2 fp32 embedder", "MMEB eval encoder on cpu"):
        assert f"| {check}" in out, check
    assert "| judge HF vs vLLM | skipped |" in out and "| FAISS GPU vs CPU top-50 | skipped |" in out
