"""Smoke test of ``make bench``: ``bench/run.py --quick`` writes well-formed, consistent results.

The quick bench runs every measurement (train step in modes none/sharding/pmap, scan vs loop
sampling, chunked vs looped ELBO, matmul peak, one variant) at tiny sizes in two worker
processes; it takes ~20 s on an idle 2-core machine.
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _numbers(obj, path="results"):
    """Yields (path, value) for every int/float leaf of a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield path, obj


def _positive(x):
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # make bench prints the targets table (ELBO vmap vs loop among them) on stdout.
    assert "| measurement | ours |" in proc.stdout and "ELBO chunked vmap vs Python loop" in proc.stdout
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_schema_and_all_numbers_finite(quick_results):
    res, _ = quick_results
    assert res["schema_version"] == 1 and res["mode"] == "quick"
    assert res["failures"] == []
    for key in ("started_utc", "total_runtime_s", "loadavg_start", "machine", "base_xla_flags",
                "reference", "matmul_peak", "train", "variants", "sampling", "elbo", "targets"):
        assert key in res, key
    for path, value in _numbers(res):
        assert math.isfinite(value), path
    assert _positive(res["total_runtime_s"]) and _positive(res["matmul_peak_gflops"])


def test_train_rows(quick_results):
    res, _ = quick_results
    assert [(r["mode"], r["devices"]) for r in res["train"]] == [
        ("none", 1), ("sharding", 2), ("pmap", 2)]
    for row in res["train"] + res["variants"]:
        for key in ("images_per_s", "step_s_median", "compile_s", "achieved_gflops",
                    "peak_rss_mib", "flops_per_step"):
            assert _positive(row[key]), (row["name"], key)
        assert row["loss_finite"]
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["step_s_median"])
        assert row["fraction_of_matmul_peak"] == pytest.approx(
            row["achieved_gflops"] / res["matmul_peak_gflops"])
    assert res["variants"][0]["vs_baseline"] == pytest.approx(
        res["variants"][0]["images_per_s"] / res["train"][0]["images_per_s"])
    assert "ynn" not in res["variants"][0]["xla_flags"]


def test_sampling_scan_equals_loop(quick_results):
    res, _ = quick_results
    s = res["sampling"]
    assert s["extrapolated"] and s["scale"] == s["T"] / s["steps_timed"]
    for side in ("scan", "loop"):
        assert _positive(s[side]["s_per_image"]) and _positive(s[side]["compile_s"])
        assert s[side]["s_per_run"] == pytest.approx(
            statistics.median(s[side]["times_s"]) * s["scale"])
    # The same step and keys: the compiled scan and the Python loop give the same samples.
    assert s["max_abs_diff_scan_vs_loop"] < 1e-5


def test_elbo_chunked_equals_loop(quick_results):
    res, _ = quick_results
    assert set(res["elbo"]) == {"benchmark", "mlp"}
    for e in res["elbo"].values():
        assert str(e["best_chunk"]) in e["chunked"]
        best = e["chunked"][str(e["best_chunk"])]["s_per_elbo"]
        assert all(c["s_per_elbo"] >= best for c in e["chunked"].values())
        assert e["loop_over_best_chunked"] == pytest.approx(e["loop"]["s_per_elbo"] / best)
        # Same terms and keys: the vmapped ELBO equals the per-t loop (nats, summed over pixels).
        assert e["max_abs_diff_chunked_vs_loop_nats"] < 1e-3 * max(1.0, abs(e["elbo_nats_mean"]))


def test_targets_and_markdown(quick_results):
    res, md = quick_results
    ref = res["reference"]
    names = [t["name"] for t in res["targets"]]
    assert len(names) == 7  # the quick sizes have no "mlp32" row
    for t in res["targets"]:
        assert _positive(t["ratio"]) and isinstance(t["met"], bool)
    train = res["targets"][0]
    assert train["ratio"] == pytest.approx(train["measured"] / ref["train_images_per_s"])
    sample = res["targets"][2]
    assert sample["ratio"] == pytest.approx(ref["sample_s_per_image"] / sample["measured"])
    for heading in ("## Against the targets", "## What the targets ask of this CPU",
                    "## Train step", "## Sampling", "## Full ELBO",
                    "## What moves the train-step number", "| measurement | ours |"):
        assert heading in md, heading


def test_arithmetic_bounds(quick_results):
    """Each bound: required FLOP/s = XLA FLOPs ÷ target time; best time = FLOPs ÷ measured peak."""
    res, md = quick_results
    ref, peak = res["reference"], res["matmul_peak_gflops"]
    bounds = {b["name"].split(" (")[0]: b for b in res["bounds"]}
    assert set(bounds) == {"train step", "1000-step sampling", "full T = 1000 ELBO",
                           "full T = 1000 ELBO at 2× our Python loop"}
    for b in bounds.values():
        assert _positive(b["gflop"]) and _positive(b["ours_gflops"])
        assert b["required_gflops"] == pytest.approx(b["gflop"] / b["target_s"])
        assert b["best_s_at_peak"] == pytest.approx(b["gflop"] / peak)
        assert b["required_over_peak"] == pytest.approx(b["required_gflops"] / peak)
    train = bounds["train step"]
    assert train["target_s"] == pytest.approx(res["train"][0]["batch"] / (1.5 * ref["train_images_per_s"]))
    assert bounds["1000-step sampling"]["target_s"] == pytest.approx(ref["sample_s_per_image"] / 2)
    assert bounds["full T = 1000 ELBO"]["target_s"] == pytest.approx(ref["elbo_s_per_image"] / 3)
    assert bounds["full T = 1000 ELBO at 2× our Python loop"]["target_s"] == pytest.approx(
        res["elbo"]["benchmark"]["loop"]["s_per_image"] / 2)
    assert _positive(res["conv3x3_gflops"])
    floor = res["elbo"]["mlp"]["floor"]
    assert _positive(floor["network_s"])
    assert "ELBO floor, mlp" in md


def test_winograd_probe_computes_the_same_convolution():
    """bench/winograd_probe.py times a Winograd F(2×2, 3×3) convolution: it must be the same conv."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import jax
        import numpy as np
        from winograd_probe import direct_conv3x3, winograd_conv3x3
    finally:
        sys.path.pop(0)
    for shape in ((2, 6, 6, 3), (1, 7, 5, 4)):  # even and odd sizes
        x = jax.random.normal(jax.random.key(0), shape)
        w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 5))
        np.testing.assert_allclose(winograd_conv3x3(x, w), direct_conv3x3(x, w), atol=1e-4, rtol=1e-4)
        grad = [jax.grad(lambda w, f=f, x=x: (f(x, w) ** 2).sum())(w) for f in (winograd_conv3x3, direct_conv3x3)]
        np.testing.assert_allclose(grad[0], grad[1], rtol=1e-3, atol=1e-3)
