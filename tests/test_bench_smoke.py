"""Smoke test of ``make bench``: ``bench/run.py --quick --peer off`` writes well-formed, consistent
results, and every ratio to the PyTorch peer is "unavailable" without it (no stored constants).

The quick bench runs every measurement of ours (the digits train step of ``make train`` with a
tiny U-Net, train step in modes none/sharding/pmap, scan vs loop sampling, chunked vs looped
ELBO, matmul peak, one variant) at tiny sizes in two worker processes; it takes ~30 s on an idle
2-core machine. The report's ratios with the peer (measured, alternating rounds) and the
platform logic are checked on synthetic records (plain Python, no torch needed); the peer itself
is tested in ``tests/test_peer_torch.py``.
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402  (plain Python: imports neither jax nor torch)
import run as bench_run  # noqa: E402

sys.path.pop(0)


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
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--peer", "off", "--out",
         str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # make bench prints the targets table (ELBO vmap vs loop among them) on stdout.
    assert "| measurement | ours |" in proc.stdout and "ELBO chunked vmap vs Python loop" in proc.stdout
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_schema_and_all_numbers_finite(quick_results):
    res, _ = quick_results
    assert res["schema_version"] == 2 and res["mode"] == "quick"
    assert res["failures"] == [] and res["skipped"] == []
    for key in ("started_utc", "total_runtime_s", "loadavg_start", "machine", "base_xla_flags",
                "platform", "peer", "matmul_peak", "digits", "train", "variants", "sampling",
                "elbo", "targets"):
        assert key in res, key
    assert "reference" not in res  # no stored constants from another day
    assert res["platform"]["platform"] == "cpu" and res["platform"]["cpu_only_xla_flags"]
    assert res["platform"]["device_kind"]
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


def test_digits_main_step(quick_results):
    """The digits row times the step of `make train` (built from its config; tiny U-Net here)."""
    res, md = quick_results
    d = res["digits"]
    assert d["config"] == "experiments/configs/ddpm_digits.py" and d["model_overrides"]
    assert d["batch"] == 64 and d["image_shape"] == [8, 8, 1] and d["mode"] == "none"
    assert d["steps_per_call"] >= 1 and d["steps_per_rep"] % d["steps_per_call"] == 0
    assert d["rounds"] == 1 and d["loss_finite"]
    assert d["steps_per_s"] == pytest.approx(1.0 / d["step_s_median"])
    assert d["images_per_s"] == pytest.approx(d["batch"] / d["step_s_median"])
    for key in ("compile_s", "first_call_s", "cores_busy", "peak_rss_mib"):
        assert _positive(d[key]), key
    assert "## Digits train step (the step of `make train`)" in md


def test_targets_and_markdown(quick_results):
    res, md = quick_results
    names = [t["name"] for t in res["targets"]]
    assert len(names) == 6  # 3 against the peer, 3 against our own baselines (no "mlp32" row)
    own = [t for t in res["targets"] if t["against"] == "own"]
    assert len(own) == 3
    for t in own:
        assert _positive(t["ratio"]) and isinstance(t["met"], bool) and t["unavailable"] is None
    for heading in ("## Against the targets", "## Benchmark train step", "## Sampling",
                    "## Full ELBO", "## What moves the train-step number",
                    "| measurement | ours |"):
        assert heading in md, heading


def test_peer_ratios_unavailable_without_the_peer(quick_results):
    """--peer off: every ratio to the peer is null with the reason; nothing else stands in."""
    res, md = quick_results
    assert res["peer_choice"] == "off"
    peer = res["peer"]
    assert peer["status"] == "off" and peer["measured"] is False
    assert peer["reason"] == bench_run.PEER_OFF == "unavailable (not measured: --peer off)"
    assert peer["digits"] is None and peer["train"] is None and peer["sampling"] is None
    assert peer["versions"] is None
    peer_targets = [t for t in res["targets"] if t["against"] == "peer"]
    assert [t["target_ratio"] for t in peer_targets] == [1.0, 1.0, 1.2]
    assert peer_targets[0]["name"].startswith("digits train steps/s")
    assert peer_targets[1]["name"].startswith("benchmark U-Net train images/s")
    assert peer_targets[2]["name"].startswith("1000-step ancestral sampling")
    for t in peer_targets:
        assert t["ratio"] is None and t["reference"] is None and t["met"] is None
        assert t["unavailable"] == peer["reason"]
        assert _positive(t["measured"])
    assert all(row["vs_peer"] is None for row in res["train"])
    # The markdown says why, in the targets table and the sections.
    assert md.count("unavailable (not measured: --peer off)") >= 4
    assert not hasattr(report, "REFERENCE")


def test_peer_missing_reason_names_the_extra():
    assert bench_run.PEER_MISSING == (
        "unavailable (install the peer: `pip install -e '.[bench-peer]'`)")
    status = bench_run.peer_status("auto")
    assert status["measured"] == bench_run.peer_installed()
    if not status["measured"]:
        assert status["reason"] == bench_run.PEER_MISSING


def test_arithmetic_bounds(quick_results):
    """Each bound: required FLOP/s = XLA FLOPs ÷ target time; best time = FLOPs ÷ measured peak.
    Without the peer only the bound against our own baseline is left."""
    res, md = quick_results
    peak = res["matmul_peak_gflops"]
    bounds = {b["name"].split(" (")[0]: b for b in res["bounds"]}
    assert set(bounds) == {"full T = 1000 ELBO at 2× our Python loop"}
    for b in bounds.values():
        assert _positive(b["gflop"]) and _positive(b["ours_gflops"])
        assert b["required_gflops"] == pytest.approx(b["gflop"] / b["target_s"])
        assert b["best_s_at_peak"] == pytest.approx(b["gflop"] / peak)
        assert b["required_over_peak"] == pytest.approx(b["required_gflops"] / peak)
        assert b["reference_gflops"] is None
    assert bounds["full T = 1000 ELBO at 2× our Python loop"]["target_s"] == pytest.approx(
        res["elbo"]["benchmark"]["loop"]["s_per_image"] / 2)
    assert "Rows for targets against the peer are left out" in md
    assert _positive(res["conv3x3_gflops"])
    floor = res["elbo"]["mlp"]["floor"]
    assert _positive(floor["network_s"])
    assert "ELBO floor, mlp" in md


# --------------------------------------------------------------------------- synthetic records
# The report with the peer measured (alternating rounds) and on a GPU, without running anything.

_TORCH = dict(torch_version="2.13.0+cpu", diffusers_version="0.42.1", mkldnn_available=True,
              num_threads=2, device="cpu", device_name="cpu")


def _our_train(step_s, *, net="benchmark", devices=1, mode="none", batch=64, **extra):
    return dict(net=net, params=1_539_329, image_shape=[28, 28, 1], mode=mode, devices=devices,
                dtype="float32", remat=False, xla_flags="f", platform="cpu", device_kind="cpu",
                batch=batch, step_s_median=step_s, step_s_all=[step_s, step_s * 1.1],
                cores_busy=1.5, peak_rss_mib=700.0, compile_s=10.0, first_call_s=1.0,
                xla_flops_per_step=60e9, xla_memory=None, loss_finite=True, **extra)


def _peer_train(step_s, net="benchmark", batch=64):
    return dict(net=net, params=1, batch=batch, image_shape=[28, 28, 1], steps_per_rep=1, reps=5,
                warmup=1, step_s_median=step_s, step_s_all=[step_s] * 5, cores_busy=1.9,
                peak_rss_mib=400.0, first_call_s=1.0, loss_finite=True,
                settings=dict(lr=1e-3, decay="cosine", warmup_steps=100, grad_clip=1.0,
                              ema_decay=0.995), **_TORCH)


def _record(group, name, result, *, side="ours", rnd=None, **job):
    rec = dict(group=group, name=name, side=side, worker=job.pop("worker", "train"), wall_s=1.0,
               **job)
    if rnd is not None:
        rec["round"] = rnd
    if result is None:
        rec["error"] = "worker exited with 1"
    else:
        rec["result"] = dict(result, peak_rss_mib=result.get("peak_rss_mib", 500.0))
    return rec


def _synthetic(peer_sample_fails=False):
    digits = dict(config="experiments/configs/ddpm_digits.py", steps_per_call=1, steps_per_rep=60,
                  reps=3, warmup=10, model_overrides=None)
    sample = dict(T=1000, batch=16, steps_timed=100, scale=10.0, extrapolated=True, reps=3,
                  scan=dict(s_per_image=4.0, s_per_run=64.0, compile_s=2.0, times_s=[6.4] * 3,
                            xla_memory=None),
                  loop=dict(s_per_image=4.2, s_per_run=67.2, compile_s=2.0, times_s=[6.7] * 3,
                            xla_memory=None),
                  loop_over_scan=1.05, max_abs_diff_scan_vs_loop=0.0, xla_flops_per_step=15e9)
    records = [_record("peak", "matmul peak, YNN flag", dict(gflops_median=200.0, n=2048,
                                                            conv3x3_gflops_median=150.0),
                       worker="peak")]
    ours_digits, torch_digits = [0.10, 0.12], [0.08, 0.07]
    for r in (1, 2):
        records.append(_record("digits", "digits train step (make train)",
                               _our_train(ours_digits[r - 1], net="digits_main", **digits), rnd=r))
        records.append(_record("digits", "torch digits train step",
                               _peer_train(torch_digits[r - 1], net="digits"), side="peer",
                               rnd=r, worker="torch_train"))
    ours_1, ours_2, torch_b = [1.0, 0.9], [0.8, 0.95], [0.7, 0.6]
    for r in (1, 2):
        records.append(_record("train", "none, 1 device", _our_train(ours_1[r - 1]), rnd=r,
                               alternated=True))
        records.append(_record("train", "sharding, 2 devices",
                               _our_train(ours_2[r - 1], devices=2, mode="sharding"), rnd=r,
                               alternated=True))
        records.append(_record("train", "torch benchmark train step", _peer_train(torch_b[r - 1]),
                               side="peer", rnd=r, worker="torch_train"))
    records.append(_record("sample", "sampling", sample, worker="sample"))
    peer_sample = None if peer_sample_fails else dict(s_per_image=5.6, s_per_run=89.6,
                                                      times_s=[8.96] * 3, **_TORCH)
    records.append(_record("sample", "torch sampling", peer_sample, side="peer",
                           worker="torch_sample"))
    meta = dict(schema_version=2, mode="full", started_utc="2026-12-01T00:00:00+00:00",
                total_runtime_s=500.0, loadavg_start=[0.1, 0.1, 0.1], loadavg_end=[2, 1, 1],
                machine=dict(cpu_count=2, cpu_model="x", python="3.11", platform="linux",
                             versions=dict(jax="0.10.2", flax="0.12.8", optax="0.2.8")),
                platform_detected="cpu", base_xla_flags="f", peer_choice="auto",
                peer_status=dict(status="measured", measured=True, reason=None, rounds=2,
                                 install="pip install -e '.[bench-peer]'"))
    return meta, records, (ours_digits, torch_digits, ours_1, ours_2, torch_b)


def test_peer_ratios_are_medians_over_rounds_of_this_run():
    meta, records, (ours_d, torch_d, ours_1, ours_2, torch_b) = _synthetic()
    res = report.build_results(meta, records)
    md = report.markdown(res)
    targets = {t["name"].split(" (")[0]: t for t in res["targets"]}
    digits = targets["digits train steps/s"]
    med = statistics.median
    assert digits["measured"] == pytest.approx(1 / med(ours_d))
    assert digits["reference"] == pytest.approx(1 / med(torch_d))
    assert digits["ratio"] == pytest.approx(med(torch_d) / med(ours_d))
    assert digits["met"] is False and digits["target_ratio"] == 1.0
    assert digits["against"] == "peer, measured in this run, alternating, 2 rounds"
    # The best of the alternated configs by its median over the rounds (sharding: 0.875 s).
    train = targets["benchmark U-Net train images/s"]
    assert "sharding, 2 devices" in train["name"]
    assert train["ratio"] == pytest.approx(med(torch_b) / med(ours_2))
    rows = {row["name"]: row for row in res["train"]}
    assert rows["none, 1 device"]["images_per_s_rounds"] == pytest.approx([64 / s for s in ours_1])
    assert rows["none, 1 device"]["vs_peer"] == pytest.approx(med(torch_b) / med(ours_1))
    assert rows["none, 1 device"]["rounds"] == 2 and len(rows["none, 1 device"]["step_s_all"]) == 4
    sample = targets["1000-step ancestral sampling s/image"]
    assert sample["ratio"] == pytest.approx(5.6 / 4.0) and sample["met"] is True
    assert res["peer"]["versions"]["torch_version"] == "2.13.0+cpu"
    # What the targets ask: the peer's time of this run ÷ the target ratio.
    bounds = {b["name"].split(" (")[0]: b for b in res["bounds"]}
    assert bounds["digits train step"]["target_s"] == pytest.approx(med(torch_d) / 1.0)
    assert bounds["benchmark train step"]["target_s"] == pytest.approx(med(torch_b) / 1.0)
    assert bounds["1000-step sampling"]["target_s"] == pytest.approx(5.6 / 1.2)
    assert bounds["1000-step sampling"]["reference_gflops"] == pytest.approx(
        15e9 * 1000 / 16 / 5.6 / 1e9)
    assert "measured in this run, alternating, 2 rounds" in md
    assert "unavailable" not in md


def test_a_failed_peer_measurement_is_unavailable_and_a_failure():
    meta, records, _ = _synthetic(peer_sample_fails=True)
    res = report.build_results(meta, records)
    sample = next(t for t in res["targets"] if t["name"].startswith("1000-step"))
    assert sample["ratio"] is None and sample["unavailable"] == report.PEER_FAILED
    assert [f["name"] for f in res["failures"]] == ["torch sampling"]
    assert report.PEER_FAILED in report.markdown(res)


def test_gpu_platform_skips_cpu_only_settings(monkeypatch):
    jobs = bench_run.build_jobs(False, True, True, peer=True, platform_name="gpu")
    skipped = {job["name"]: job["skip"] for job in jobs if "skip" in job}
    assert "sharding, 2 devices" in skipped and "sharding, 8 devices" in skipped
    assert "pmap, 2 devices" in skipped and "matmul peak, jaxlib default" in skipped
    assert "no YNN flag (jaxlib default)" in skipped and "opt preset FAST_RUNTIME" in skipped
    assert all("CPU-only" in reason and "gpu" in reason for reason in skipped.values())
    ran = [job for job in jobs if "skip" not in job]
    assert {job["worker"] for job in ran} >= {"torch_train", "torch_sample", "train", "sample"}
    assert all(job.get("devices", 1) == 1 for job in ran)
    # No CPU-only XLA flag on a GPU; on CPU the YNN flag and the forced device count.
    two = dict(worker="train", devices=2)
    assert bench_run.xla_flags(dict(worker="train"), False, "gpu") == ""
    assert bench_run.xla_flags(dict(worker="train", extra="--xla_cpu_x=1 --xla_y=2"), True,
                               "gpu") == "--xla_y=2"
    assert bench_run.xla_flags(two, False, "cpu") == (
        f"{bench_run.YNN_FLAG} --xla_force_host_platform_device_count=2")
    assert all("skip" not in job for job in bench_run.build_jobs(False, True, True, peer=True))
    for value, expected in (("cpu", "cpu"), ("cuda", "gpu"), ("gpu,cpu", "gpu"), ("tpu", "tpu")):
        monkeypatch.setenv("JAX_PLATFORMS", value)
        assert bench_run.detect_platform() == expected


def test_paced_rounds_alternate_between_long_lived_workers():
    """run_paced: one worker per measurement, its repetitions started in the job order (round 1
    of each, then round 2 of each), each record carrying that repetition's step time."""
    jobs = [dict(group="train", side="ours", round=r, paced=True, alternated=True, name=name,
                 worker="train", net="mlp", mode=mode, devices=devices)
            for r in (1, 2) for name, mode, devices in (("none, 1 device", "none", 1),
                                                        ("sharding, 2 devices", "sharding", 2))]
    records = bench_run.run_paced(jobs, True, timeout=300)
    assert all("error" not in r for r in records), [r.get("error") for r in records]
    assert [(r["name"], r["round"], r["result"]["rep"]) for r in records] == [
        (job["name"], job["round"], job["round"]) for job in jobs]
    started = [r["result"]["started_unix"] for r in records]
    assert started == sorted(started)  # the repetitions ran in the order of the jobs
    for r in records:
        res = r["result"]
        assert res["reps"] == 2 and len(res["rep_step_s"]) == 2
        assert res["step_s_median"] == res["rep_step_s"][r["round"] - 1]
        assert res["step_s_median"] == pytest.approx(statistics.median(res["step_s_all"]))
        assert res["images_per_s"] == pytest.approx(res["batch"] / res["step_s_median"])
    assert {r["result"]["jax_devices"] for r in records} == {1, 2}


def test_a_paced_worker_that_fails_is_an_error_for_its_rounds_only():
    jobs = [dict(group="train", side="ours", round=1, paced=True, name="broken",
                 worker="train", net="mlp", mode="none", devices=1, dtype="float13"),
            dict(group="train", side="ours", round=1, paced=True, name="fine",
                 worker="train", net="mlp", mode="none", devices=1)]
    broken, fine = bench_run.run_paced(jobs, True, timeout=300)
    assert "set-up" in broken["error"] and "float13" in broken["error"]
    assert "error" not in fine and fine["result"]["rep"] == 1


def test_speed_probe_group_norm_candidates_compute_the_library_function():
    """bench/speed_probes.py's GroupNorm candidates (hand-written backward as custom_vjp, tangent
    map as custom_jvp, the custom-VJP GroupNorm + SiLU) give the library's values, gradients and
    (custom_jvp) tangents."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import jax
        import numpy as np
        import speed_probes as sp
    finally:
        sys.path.pop(0)
    from diffusion_jax.models.unet import group_norm

    k = jax.random.split(jax.random.key(0), 5)
    G, x = 4, 2 * jax.random.normal(k[0], (2, 4, 4, 16)) + 0.5
    scale, bias = 1 + 0.1 * jax.random.normal(k[1], (16,)), 0.1 * jax.random.normal(k[2], (16,))
    ct, v = jax.random.normal(k[3], x.shape), jax.random.normal(k[4], x.shape)

    def silu_gn(x, s, b, fn):
        return jax.nn.silu(fn(x, s, b, G)) if fn is not sp.group_norm_silu_custom_vjp else fn(x, s, b, G)

    want = silu_gn(x, scale, bias, group_norm)
    want_grad = jax.grad(lambda *a: (silu_gn(*a, group_norm) * ct).sum(), (0, 1, 2))(x, scale, bias)
    for fn in (sp.group_norm_custom_vjp, sp.group_norm_custom_jvp, sp.group_norm_silu_custom_vjp):
        np.testing.assert_allclose(silu_gn(x, scale, bias, fn), want, rtol=1e-4, atol=1e-5)
        grad = jax.grad(lambda *a, fn=fn: (silu_gn(*a, fn) * ct).sum(), (0, 1, 2))(x, scale, bias)
        for got, expected in zip(grad, want_grad, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    tangent = jax.jvp(lambda x: sp.group_norm_custom_jvp(x, scale, bias, G), (x,), (v,))[1]
    expected = jax.jvp(lambda x: group_norm(x, scale, bias, G), (x,), (v,))[1]
    np.testing.assert_allclose(tangent, expected, rtol=1e-3, atol=1e-4)


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
