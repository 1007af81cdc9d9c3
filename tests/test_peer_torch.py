"""The PyTorch + diffusers peer of ``make bench`` (``bench/peer_torch.py``) and its alternation.

The peer is optional (``pip install -e '.[bench-peer]'``; CI installs only ``.[dev]``): the
tests that need torch and diffusers are skipped without them. The job-list test is plain Python
and always runs.
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
import run as bench_run  # noqa: E402  (plain Python: imports neither jax nor torch)

sys.path.pop(0)


@pytest.fixture(scope="module")
def peer():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import peer_torch
    finally:
        sys.path.pop(0)
    return peer_torch


@pytest.fixture(scope="module")
def digits_config():
    from diffusion_jax.cli import load_config

    return load_config(str(ROOT / "experiments" / "configs" / "ddpm_digits.py"))


def _our_param_count(model, image_shape):
    import jax
    import jax.numpy as jnp

    from diffusion_jax.models import num_params

    x = jnp.zeros((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.ones((1,), jnp.int32),
                                               train=False)["params"])
    return num_params(shapes)


def test_parameter_counts_equal_ours(peer, digits_config):
    from diffusion_jax.models import unet_benchmark
    from diffusion_jax.training import kinds

    ours_digits = kinds.get("ddpm").build(digits_config, (8, 8, 1))
    assert _our_param_count(ours_digits, (8, 8, 1)) == 651_041
    assert peer.num_params(peer.build_unet("digits")) == 651_041
    assert _our_param_count(unet_benchmark(), (28, 28, 1)) == 1_539_329
    assert peer.num_params(peer.build_unet("benchmark")) == 1_539_329
    # GroupNorm's group count changes the function, not the parameter count: checked apart.
    assert peer.NETS["digits"]["norm_num_groups"] == digits_config.model.num_groups
    assert peer.NETS["benchmark"]["norm_num_groups"] == unet_benchmark().num_groups


def test_train_settings_are_our_configs(peer, digits_config):
    """The torch step trains with the settings of our side: the digits config of `make train`
    and the benchmark step of bench/measure.py (base_config("ddpm"), lr 2e-4)."""
    from diffusion_jax.training.config import base_config

    base = base_config("ddpm")
    for net, cfg, lr in (("digits", digits_config, digits_config.optim.lr), ("benchmark", base, 2e-4)):
        s = peer.TRAIN[net]
        o = cfg.optim
        assert cfg.optim.optimizer == "adamw"
        assert (s["lr"], s["b1"], s["b2"], s["eps"]) == (lr, o.b1, o.b2, o.eps)
        assert (s["weight_decay"], s["grad_clip"], s["ema_decay"]) == (
            o.weight_decay, o.grad_clip, o.ema_decay)
        assert (s["warmup_steps"], s["decay"]) == (o.warmup_steps, o.decay)
        assert s["T"] == cfg.diffusion.T and cfg.diffusion.schedule == "linear"
        assert (peer.BETA_1, peer.BETA_T) == (cfg.diffusion.beta_1, cfg.diffusion.beta_T)
    assert peer.TRAIN["digits"]["num_steps"] == digits_config.train.num_steps
    assert peer.TRAIN["digits"]["batch"] == digits_config.data.batch_size
    assert digits_config.diffusion.loss == "l_simple" and digits_config.model.dropout == 0.0


def test_lr_schedule_matches_ours(peer, digits_config):
    from diffusion_jax.training.optim import learning_rate_schedule

    for cfg in (digits_config.optim,):
        ours = learning_rate_schedule(cfg, digits_config.train.num_steps)
        factor = peer.lr_lambda(cfg.warmup_steps, cfg.decay, digits_config.train.num_steps)
        for step in (0, 1, 50, 99, 100, 101, 1000, 2499, 2500, 3000):
            assert cfg.lr * factor(step) == pytest.approx(float(ours(step)), rel=1e-5, abs=1e-9)


def test_time_embedding_is_ours(peer):
    """diffusers' positional embedding with flip_sin_to_cos=False, freq_shift=1 is DDPM's."""
    import numpy as np
    import torch

    from diffusion_jax.models import timestep_embedding

    model = peer.build_unet("digits")
    t = np.array([1, 17, 500, 1000])
    theirs = model.time_proj(torch.as_tensor(t)).numpy()
    np.testing.assert_allclose(theirs, np.asarray(timestep_embedding(t, 32)), rtol=1e-5,
                               atol=1e-4)


def test_digits_net_output_shape(peer):
    import torch

    model = peer.build_unet("digits").eval()
    x = torch.zeros(3, 1, 8, 8)
    with torch.inference_mode():
        out = model(x, torch.tensor([1, 500, 1000]), return_dict=False)[0]
    assert out.shape == (3, 1, 8, 8)


def test_one_tiny_train_step(peer):
    """Two steps on 4 real digits: finite losses; the first (lr 0 at warm-up step 0) leaves the
    parameters unchanged, the second moves them, and the EMA follows."""
    import torch

    model, step = peer.make_train_step("digits", seed=0, dev=torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    x0 = torch.from_numpy(peer.digits_images("train")[:4])
    assert x0.shape == (4, 1, 8, 8) and float(x0.min()) >= -1 and float(x0.max()) <= 1
    loss = step(x0)
    assert math.isfinite(float(loss))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    loss = step(x0)
    assert math.isfinite(float(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_train_task_record(peer):
    r = peer.train_task_torch(net="digits", batch=4, steps=2, warmup=0, reps=2)
    assert r["loss_finite"] and r["params"] == 651_041 and r["framework"] == "torch"
    assert len(r["step_s_all"]) == 2 and r["step_s_median"] > 0
    assert r["steps_per_s"] == pytest.approx(1 / r["step_s_median"])
    assert r["images_per_s"] == pytest.approx(4 / r["step_s_median"])
    assert r["torch_version"].startswith("2.13.0") and r["diffusers_version"] == "0.42.1"
    assert r["device"] in ("cpu", "cuda") and r["num_threads"] >= 1
    assert isinstance(r["mkldnn_available"], bool)


def test_torch_worker_imports_no_jax(peer):
    """`run.py --worker torch_train/torch_sample` (quick sizes) print their results and never
    import jax."""
    code = (
        "import sys; sys.path.insert(0, 'bench'); import run; "
        "run.main(['--quick', '--worker', 'torch_train', '--net', 'digits']); "
        "run.main(['--quick', '--worker', 'torch_sample']); "
        "assert 'jax' not in sys.modules, 'a torch worker imported jax'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line[len(bench_run.RESULT_PREFIX):]) for line in proc.stdout.splitlines()
             if line.startswith(bench_run.RESULT_PREFIX)]
    assert [r["task"] for r in lines] == ["torch_train", "torch_sample"]
    train, sample = lines
    assert train["loss_finite"] and train["net"] == "digits" and train["peak_rss_mib"] > 0
    assert sample["finite"] and sample["extrapolated"]
    assert sample["s_per_image"] == pytest.approx(
        statistics.median(sample["times_s"]) * sample["scale"] / sample["batch"])


def test_jobs_alternate_ours_and_the_peer():
    """With the peer: digits ours, torch, ours, torch; the benchmark step's configs and torch in
    each round; sampling ours then torch. Without it: the same list with no peer job."""
    jobs = bench_run.build_jobs(False, True, peer=True)
    rounds = bench_run.SIZES["full"]["rounds"]
    assert rounds >= 2

    def sequence(group):
        return [(job["side"], job.get("round"), job["worker"]) for job in jobs
                if job["group"] == group]

    assert sequence("digits") == [
        (side, r, worker) for r in range(1, rounds + 1)
        for side, worker in (("ours", "train"), ("peer", "torch_train"))]
    assert all(job["net"] == "digits_main" for job in jobs
               if job["group"] == "digits" and job["side"] == "ours")
    configs = bench_run.SIZES["full"]["train_configs"]
    assert [(mode, devices) for mode, devices in configs] == [("none", 1), ("sharding", 2)]
    assert sequence("train") == [
        (side, r, worker) for r in range(1, rounds + 1)
        for side, worker in [("ours", "train")] * len(configs) + [("peer", "torch_train")]]
    assert sequence("sample") == [("ours", None, "sample"), ("peer", None, "torch_sample")]
    # Alternation in the order the jobs run: no two peer jobs of a group in a row.
    for group in ("digits", "train"):
        sides = [side for side, _, _ in sequence(group)]
        assert all(not (a == b == "peer") for a, b in zip(sides, sides[1:], strict=False))
    without = bench_run.build_jobs(False, True, peer=False)
    assert [job for job in jobs if job["side"] == "ours"] == without
    assert all(not job["worker"].startswith("torch") for job in without)
    # The alternating groups are paced units (one long-lived worker per measurement, its
    # rounds in the job order); other peer jobs get processes of their own, also in --quick.
    for quick in (True, False):
        units = bench_run.group_jobs(bench_run.build_jobs(quick, True, peer=True), quick)
        paced = [unit for unit in units if unit[0].get("paced")]
        assert [unit[0]["group"] for unit in paced] == ["digits", "train"]
        for unit in paced:
            assert all(job.get("paced") for job in unit)
            assert unit == [job for job in bench_run.build_jobs(quick, True, peer=True)
                            if job["group"] == unit[0]["group"] and job.get("paced")]
        for unit in units:
            if not unit[0].get("paced"):
                assert len({job["worker"].startswith("torch") for job in unit}) == 1
