"""Turns the worker records of ``bench/run.py`` into ``results.json`` and ``results.md``.

Plain Python: the orchestrator never imports JAX or torch.

Every ratio to the PyTorch + diffusers peer is computed from two numbers measured in the same
run, alternating (ours, peer, ours, peer): our median over the rounds ÷ the peer's median over
the rounds (of each round's median step time). There are no stored reference constants: when the
peer was not measured (not installed, ``--peer off``, or its worker failed) each peer ratio is
null in results.json, with the reason, and "unavailable (...)" in results.md.
"""

from __future__ import annotations

import math
import statistics

# Within this relative margin a "never slower" comparison counts as a tie (timing noise).
NOISE = 0.03
# Targets against the peer measured in the same run (ratios ours ÷ peer, > 1 = we are faster).
PEER_TARGETS = {"digits_train": 1.0, "train": 1.0, "sample": 1.2}
PEER_FAILED = "unavailable (the peer's measurement failed in this run: see the failures)"


def _ok(record):
    return record.get("result") if "error" not in record and "skipped" not in record else None


def _side(record) -> str:
    return record.get("side", "ours")


def _by_name(records):
    """Records grouped by name, in order of first appearance (one group = the rounds of one
    configuration)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["name"], []).append(r)
    return list(groups.values())


def _rounds(records) -> dict:
    """Median over rounds of each round's median step time, and what follows from it."""
    results = [r["result"] for r in records]
    per_round = [res["step_s_median"] for res in results]
    step = statistics.median(per_round)
    batch = results[0]["batch"]
    return {"rounds": len(results), "step_s_median": step, "step_s_rounds": per_round,
            "images_per_s": batch / step, "steps_per_s": 1.0 / step,
            "images_per_s_rounds": [batch / s for s in per_round],
            "steps_per_s_rounds": [1.0 / s for s in per_round],
            "step_s_all": [t for res in results for t in res["step_s_all"]],
            "cores_busy": statistics.mean(res["cores_busy"] for res in results),
            "peak_rss_mib": max(res["peak_rss_mib"] for res in results),
            "worker_wall_s": sum(r["wall_s"] for r in records)}


def _train_row(records, flops_1dev, peak_gflops):
    """One row of our benchmark train step: the rounds of one configuration."""
    r = records[0]["result"]
    agg = _rounds(records)
    own = r.get("xla_flops_per_step")
    # Cost analysis of a multi-device executable counts one shard: use the 1-device count of the
    # same global batch for those (same network, same work).
    flops = own if r["devices"] == 1 and own else flops_1dev
    achieved = flops / agg["step_s_median"] / 1e9 if flops else None
    return {
        "name": records[0]["name"], "net": r["net"], "params": r["params"],
        "image_shape": r["image_shape"], "mode": r["mode"], "devices": r["devices"],
        "dtype": r["dtype"], "remat": r["remat"], "xla_flags": r["xla_flags"],
        "platform": r.get("platform"), "device_kind": r.get("device_kind"), "batch": r["batch"],
        "alternated": bool(records[0].get("alternated", False)),
        **agg,
        "compile_s": statistics.median(x["result"]["compile_s"] for x in records),
        "first_call_s": statistics.median(x["result"]["first_call_s"] for x in records),
        "flops_per_step": flops, "xla_flops_per_step_own": own, "achieved_gflops": achieved,
        "fraction_of_matmul_peak": achieved / peak_gflops if achieved and peak_gflops else None,
        "xla_memory": r["xla_memory"],
        "loss_finite": all(x["result"]["loss_finite"] for x in records),
    }


def _digits_row(records, peak_gflops):
    """Our digits train step (the step of ``make train``) over its rounds."""
    r = records[0]["result"]
    agg = _rounds(records)
    flops = r.get("xla_flops_per_step")
    achieved = flops / agg["step_s_median"] / 1e9 if flops else None
    return {
        "name": records[0]["name"], "net": r["net"], "config": r["config"],
        "params": r["params"], "batch": r["batch"], "image_shape": r["image_shape"],
        "mode": r["mode"], "devices": r["devices"], "steps_per_call": r["steps_per_call"],
        "model_overrides": r.get("model_overrides"), "xla_flags": r["xla_flags"],
        "platform": r.get("platform"), "device_kind": r.get("device_kind"),
        "steps_per_rep": r["steps_per_rep"], "reps": r["reps"], "warmup": r["warmup"],
        **agg,
        "compile_s": statistics.median(x["result"]["compile_s"] for x in records),
        "first_call_s": statistics.median(x["result"]["first_call_s"] for x in records),
        "flops_per_step": flops, "achieved_gflops": achieved,
        "fraction_of_matmul_peak": achieved / peak_gflops if achieved and peak_gflops else None,
        "xla_memory": r["xla_memory"],
        "loss_finite": all(x["result"]["loss_finite"] for x in records),
    }


_VERSION_KEYS = ("torch_version", "diffusers_version", "mkldnn_available", "num_threads",
                 "device", "device_name")


def _peer_train_row(records):
    r = records[0]["result"]
    return {"name": records[0]["name"], "net": r["net"], "params": r["params"],
            "batch": r["batch"], "image_shape": r["image_shape"],
            "steps_per_rep": r["steps_per_rep"], "reps": r["reps"], "warmup": r["warmup"],
            **_rounds(records),
            "first_call_s": statistics.median(x["result"]["first_call_s"] for x in records),
            "loss_finite": all(x["result"]["loss_finite"] for x in records),
            "settings": r["settings"], **{k: r[k] for k in _VERSION_KEYS}}


def _target(name, measured, reference, ratio, target, unit, *, tie_ok=False, against="own"):
    met = ratio >= target or (tie_ok and ratio >= target * (1 - NOISE))
    return {"name": name, "measured": measured, "reference": reference, "unit": unit,
            "against": against, "ratio": ratio, "target_ratio": target, "met": bool(met),
            "unavailable": None}


def _peer_target(name, measured, peer_value, ratio_fn, target, unit, reason, rounds):
    """A target against the peer measured in this run; unavailable (nulls + reason) without it."""
    if peer_value is None:
        return {"name": name, "measured": measured, "reference": None, "unit": unit,
                "against": "peer", "ratio": None, "target_ratio": target, "met": None,
                "unavailable": reason}
    ratio = ratio_fn(measured, peer_value)
    return {"name": name, "measured": measured, "reference": peer_value, "unit": unit,
            "against": f"peer, measured in this run, alternating, {_n(rounds, 'round')}",
            "ratio": ratio,
            "target_ratio": target, "met": bool(ratio >= target), "unavailable": None}


def _platform(records, meta) -> dict:
    """Where the JAX workers ran: the platform, the device kind, whether CPU-only flags applied."""
    results = [r["result"] for r in records if _ok(r) and _side(r) == "ours"]
    first = results[0] if results else {}
    name = first.get("platform") or meta.get("platform_detected")
    return {"platform": name, "device_kind": first.get("device_kind"),
            "detected_before_jax": meta.get("platform_detected"),
            "cpu_only_xla_flags": name == "cpu"}


def build_results(meta: dict, records: list[dict]) -> dict:
    """The results JSON: per-measurement sections, ratios against the targets, failures."""
    out = dict(meta)
    out["failures"] = [{"group": r["group"], "name": r.get("name", r["worker"]),
                        "error": r["error"]} for r in records if "error" in r]
    out["skipped"] = [{"group": r["group"], "name": r.get("name", r["worker"]),
                       "reason": r["skipped"]} for r in records if "skipped" in r]
    out["platform"] = _platform(records, meta)

    peaks = [dict(_ok(r), name=r["name"]) for r in records if r["group"] == "peak" and _ok(r)]
    out["matmul_peak"] = peaks
    peak_gflops = max((p["gflops_median"] for p in peaks), default=None)
    out["matmul_peak_gflops"] = peak_gflops
    out["conv3x3_gflops"] = max((p["conv3x3_gflops_median"] for p in peaks
                                 if p.get("conv3x3_gflops_median")), default=None)

    def ok_records(group, side):
        return [r for r in records if r["group"] == group and _side(r) == side and _ok(r)]

    def failed(group, side):
        return any(r["group"] == group and _side(r) == side and "error" in r for r in records)

    train_groups = _by_name(ok_records("train", "ours"))
    base = next((g for g in train_groups if g[0]["result"]["devices"] == 1), None)
    flops_1dev = base[0]["result"]["xla_flops_per_step"] if base else None
    out["train"] = [_train_row(g, flops_1dev, peak_gflops) for g in train_groups]
    base_ips = out["train"][train_groups.index(base)]["images_per_s"] if base else None
    out["variants"] = []
    for r in records:
        if r["group"] == "variant" and _ok(r):
            row = _train_row([r], flops_1dev, peak_gflops)
            row["vs_baseline"] = row["images_per_s"] / base_ips if base_ips else None
            out["variants"].append(row)

    digits = ok_records("digits", "ours")
    out["digits"] = _digits_row(digits, peak_gflops) if digits else None

    sample = next((_ok(r) for r in ok_records("sample", "ours")), None)
    out["sampling"] = dict(sample) if sample else None
    out["elbo"] = {r["net"]: _ok(r) for r in records if r["group"] == "elbo" and _ok(r)}

    # The peer, measured in this run (or why not).
    status = dict(meta.get("peer_status") or {"status": "off", "measured": False,
                                              "reason": "unavailable (not measured)"})
    peer_train = ok_records("train", "peer")
    peer_digits = ok_records("digits", "peer")
    peer_sample = next((_ok(r) for r in ok_records("sample", "peer")), None)
    versions = next((_ok(r) for r in records if _side(r) == "peer" and _ok(r)), None)
    out["peer"] = {
        **status,
        "framework": "PyTorch + diffusers UNet2DModel (eager)",
        "versions": {k: versions[k] for k in _VERSION_KEYS} if versions else None,
        "digits": _peer_train_row(peer_digits) if peer_digits else None,
        "train": _peer_train_row(peer_train) if peer_train else None,
        "sampling": dict(peer_sample) if peer_sample else None,
    }
    rounds = status.get("rounds", 0)

    def reason(group):
        if not status.get("measured"):
            return status["reason"]
        return PEER_FAILED if failed(group, "peer") else "unavailable (the peer was not measured)"

    for row in out["train"]:
        p = out["peer"]["train"]
        row["vs_peer"] = row["images_per_s"] / p["images_per_s"] if p else None

    targets = []
    d, pd = out["digits"], out["peer"]["digits"]
    if d:
        targets.append(_peer_target(
            f"digits train steps/s (the step of `make train`, {d['config'].split('/')[-1]})",
            d["steps_per_s"], pd["steps_per_s"] if pd else None, lambda ours, peer: ours / peer,
            PEER_TARGETS["digits_train"], "steps/s", reason("digits"), rounds))
    alternated = [row for row in out["train"] if row["alternated"]]
    if alternated:
        best = max(alternated, key=lambda row: row["images_per_s"])
        pt = out["peer"]["train"]
        targets.append(_peer_target(
            f"benchmark U-Net train images/s (best config: {best['name']})",
            best["images_per_s"], pt["images_per_s"] if pt else None,
            lambda ours, peer: ours / peer, PEER_TARGETS["train"], "images/s", reason("train"),
            rounds))
    if sample:
        s = sample["scan"]["s_per_image"]
        targets.append(_peer_target(
            f"{sample['T']}-step ancestral sampling s/image (lax.scan), speed-up", s,
            peer_sample["s_per_image"] if peer_sample else None, lambda ours, peer: peer / ours,
            PEER_TARGETS["sample"], "s/image", reason("sample"), 1 if peer_sample else 0))
        targets.append(_target("scan sampler vs Python loop over the jitted step (loop/scan)",
                               s, sample["loop"]["s_per_image"], sample["loop_over_scan"], 1.0,
                               "s/image", tie_ok=True))
    big = out["elbo"].get("benchmark")
    if big:
        best = big["chunked"][str(big["best_chunk"])]["s_per_image"]
        targets.append(_target("ELBO chunked vmap vs Python loop over t, benchmark U-Net "
                               "(loop/vmap)", best, big["loop"]["s_per_image"],
                               big["loop_over_best_chunked"], 2.0, "s/image"))
    for key, label in (("mlp32", "MLP, 32 hidden"), ("mlp", "MLP, 128 hidden")):
        small = out["elbo"].get(key)
        if small:
            best = small["chunked"][str(small["best_chunk"])]["s_per_image"]
            targets.append(_target(f"ELBO chunked vmap vs Python loop over t, small {label} "
                                   "(loop/vmap)", best, small["loop"]["s_per_image"],
                                   small["loop_over_best_chunked"], 10.0, "s/image"))
    out["targets"] = targets
    out["bounds"] = arithmetic_bounds(out)
    _check_finite(out)
    return out


def _check_finite(obj, path="results"):
    """Raises ValueError on a NaN or infinite number anywhere in the results."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path} is not finite: {obj}")


# --------------------------------------------------------------------------- markdown


def _f(x, digits=2):
    """Fixed-point with ``digits`` decimals; small numbers keep 3 significant digits."""
    if x is None:
        return "–"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    if isinstance(x, float) and 0 < abs(x) < 10 ** -(digits - 1):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _mib(mem, key="temp_mib"):
    return _f(mem.get(key), 0) if mem else "–"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _n(count, noun) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _rounds_text(values, digits=2):
    return ", ".join(_f(v, digits) for v in values)


def arithmetic_bounds(out: dict) -> list[dict]:
    """What each speed target asks of this machine: the FLOP/s it needs (XLA's count of the work
    ÷ the target time) against the float32 matmul peak measured in this run. Targets against
    the peer take the peer's time from this run; without the peer they are left out."""
    bounds = []
    peak_gflops = out.get("matmul_peak_gflops")
    if not peak_gflops:
        return bounds

    def row(name, flops, target_s, reference_s, ours_s, unit_per):
        """reference_s None: a target set against our own baseline, not the peer."""
        need = flops / target_s / 1e9
        return {"name": name, "gflop": flops / 1e9, "unit": unit_per,
                "target_s": target_s, "required_gflops": need,
                "reference_gflops": flops / reference_s / 1e9 if reference_s else None,
                "ours_gflops": flops / ours_s / 1e9 if ours_s else None,
                "best_s_at_peak": flops / (peak_gflops * 1e9),
                "required_over_peak": need / peak_gflops}

    peer = out.get("peer") or {}
    d, pd = out.get("digits"), peer.get("digits")
    if d and pd and d.get("flops_per_step"):
        bounds.append(row(f"digits train step (batch {d['batch']})", d["flops_per_step"],
                          pd["step_s_median"] / PEER_TARGETS["digits_train"],
                          pd["step_s_median"], d["step_s_median"], "step"))
    one_device = next((r for r in out["train"] if r["devices"] == 1), None)
    train_flops = one_device["flops_per_step"] if one_device else None
    alternated = [r for r in out["train"] if r.get("alternated")]
    best_train = max(alternated, key=lambda r: r["images_per_s"]) if alternated else None
    pt = peer.get("train")
    if train_flops and best_train and pt:
        bounds.append(row(f"benchmark train step (batch {best_train['batch']})", train_flops,
                          pt["step_s_median"] / PEER_TARGETS["train"], pt["step_s_median"],
                          best_train["step_s_median"], "step"))
    s, ps = out.get("sampling"), peer.get("sampling")
    if s and ps and s.get("xla_flops_per_step"):
        per_image = s["xla_flops_per_step"] * s["T"] / s["batch"]
        bounds.append(row(f"{s['T']}-step sampling (batch {s['batch']})", per_image,
                          ps["s_per_image"] / PEER_TARGETS["sample"], ps["s_per_image"],
                          s["scan"]["s_per_image"], "image"))
    big = out["elbo"].get("benchmark")
    if big and big.get("term_xla_flops"):
        # T − 1 denoising terms, each one network call on the batch, plus the decoder term.
        per_image = big["term_xla_flops"] * big["T"] / big["batch"]
        ours = big["chunked"][str(big["best_chunk"])]["s_per_image"]
        # Our own baseline: the vmapped bound ≥ 2× the Python loop over t of the same term.
        loop = big["loop"]["s_per_image"]
        bounds.append(row(f"full T = {big['T']} ELBO at 2× our Python loop", per_image,
                          loop / 2.0, None, ours, "image"))
    return bounds


def _against(t) -> str:
    if t["unavailable"]:
        return "peer (torch)"
    if t["against"] == "own":
        return "our baseline"
    return "torch, this run"


def targets_table(res: dict) -> str:
    """The markdown table of every target: ours, what it is compared with, the ratio, met."""
    rows = []
    for t in res["targets"]:
        if t["unavailable"]:
            rows.append([t["name"], f"{_f(t['measured'], 3)} {t['unit']}", _against(t), "–",
                         t["unavailable"], f"≥ {t['target_ratio']}×", "–"])
            continue
        rows.append([t["name"], f"{_f(t['measured'], 3)} {t['unit']}", _against(t),
                     f"{_f(t['reference'], 3)}", f"{t['ratio']:.2f}×", f"≥ {t['target_ratio']}×",
                     "**yes**" if t["met"] else "no"])
    return _table(["measurement", "ours", "compared with", "its value", "ratio", "target", "met"],
                  rows)


def _peer_line(res: dict) -> str:
    peer = res["peer"]
    if not peer.get("measured"):
        return f"PyTorch peer: {peer['reason']}."
    v = peer.get("versions") or {}
    return (f"Peer: PyTorch {v.get('torch_version')} + diffusers {v.get('diffusers_version')} "
            f"`UNet2DModel`s of the same networks (eager, device {v.get('device_name')}, "
            f"{v.get('num_threads')} threads, oneDNN {'on' if v.get('mkldnn_available') else 'off'}"
            f"), measured in this run, alternating with ours, {_n(peer.get('rounds'), 'round')} "
            "(a round: one timed repetition of each measurement's long-lived worker process, in "
            "turn; sampling: 1 each).")


def markdown(res: dict) -> str:
    m = res["machine"]
    quick = res["mode"] == "quick"
    plat = res.get("platform") or {}
    on_cpu = plat.get("platform", "cpu") == "cpu"
    parts = [
        "# diffusion_jax benchmark" + (" (QUICK smoke sizes: numbers are not comparable)" if quick
                                       else ""),
        "",
        f"Generated by `make bench` (`bench/run.py`{' --quick' if quick else ''}"
        f"{' --peer off' if res.get('peer_choice') == 'off' else ''}) on "
        f"{res['started_utc']}: {m['cpu_count']} CPU cores ({m['cpu_model'] or 'unknown CPU'}), "
        f"jax {m['versions'].get('jax')}, flax {m['versions'].get('flax')}, "
        f"optax {m['versions'].get('optax')}, Python {m['python']}.",
        f"Platform: **{plat.get('platform')}** (device {plat.get('device_kind')})"
        + (". " if on_cpu else "; the CPU-only XLA flags were not set and the measurements that "
           "need them (forced host devices, YNN-flag variants) were skipped. ")
        + f"Total runtime **{res['total_runtime_s']:.0f} s**. Load average (1/5/15 min) at the "
        f"start {' / '.join(f'{x:.2f}' for x in res['loadavg_start'])}, at the end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_end'])} (the bench itself keeps ~2 cores busy; "
        "a 1-minute load above ~1 at the start means another process was competing).",
        (f"Every JAX worker runs with `XLA_FLAGS={res['base_xla_flags']}` (plus the forced host "
         "device count where more than 1 device) unless the table says otherwise. " if on_cpu
         else "")
        + "Times are wall-clock medians; compile time (trace + lower + compile) is reported apart "
        "and excluded.",
        _peer_line(res),
        "",
    ]
    # The bench's own workers keep both cores busy, so only the load at the start says whether
    # another process was competing.
    if res["loadavg_start"][0] > 1.0:
        parts += ["**Warning: the machine was busy during this run (load average above 1.0 on 2 "
                  "cores); every number below is slowed by other processes and rows measured at "
                  "different times are not comparable. Rerun `make bench` on an idle machine.**",
                  ""]
    if res["failures"]:
        parts += ["**Failed measurements:** " + "; ".join(
            f"{f['group']} {f['name']}" for f in res["failures"]) + " (see results.json).", ""]
    if res.get("skipped"):
        parts += ["Skipped: " + "; ".join(f"{s['group']} {s['name']} ({s['reason']})"
                                          for s in res["skipped"]) + ".", ""]

    peer = res["peer"]
    heading = (f"measured in this run, alternating, {_n(peer.get('rounds'), 'round')}" if
               peer.get("measured") else peer["reason"])
    parts += [f"## Against the targets (peer: PyTorch + diffusers, {heading})", ""]
    parts += [targets_table(res), "",
              "Ratios against the peer: our median over the rounds ÷ the peer's median over the "
              "rounds, both measured in this run (steps/s and images/s: ours ÷ torch; s/image: "
              "torch ÷ ours, a speed-up); for our own baselines the Python loop's time ÷ the "
              "compiled version's."
              + ("" if peer.get("measured") else
                 f" Without the peer each peer ratio is {peer['reason']}; to measure it: "
                 f"`{peer.get('install', 'pip install -e .[bench-peer]')}`, then `make bench`."),
              ""]

    peak = res["matmul_peak_gflops"]
    if res.get("bounds"):
        conv = res.get("conv3x3_gflops")
        parts += ["## What the targets ask of this machine", "",
                  "Each target is a time for a fixed amount of arithmetic: XLA's cost analysis "
                  "counts the FLOPs of the work (the same network as the peer, same sizes, every "
                  "timestep), so the target time (from the peer's time in this run) fixes the "
                  "FLOP/s it needs. This run measured a float32 matmul peak of "
                  f"**{_f(peak, 0)} GFLOP/s** (an n = {res['matmul_peak'][0]['n']} square "
                  "`jnp.dot`)"
                  + (f" and {_f(conv, 0)} GFLOP/s for a single 3×3 convolution (64 → 64 "
                     "channels, 28×28, batch 64)" if conv else "") + "."
                  + ("" if peer.get("measured") else
                     " Rows for targets against the peer are left out: the peer is "
                     + peer["reason"] + "."), ""]
        rows = [[b["name"], f"{b['gflop']:,.1f} per {b['unit']}",
                 f"{b['target_s']:.3f} s", f"**{b['required_gflops']:.0f}**",
                 f"{100 * b['required_over_peak']:.0f} %", _f(b["reference_gflops"], 0),
                 _f(b["ours_gflops"], 0), f"{b['best_s_at_peak']:.3f} s"]
                for b in res["bounds"]]
        parts += [_table(["work", "XLA FLOPs", "target time", "GFLOP/s needed",
                          "of measured peak", "peer achieves", "ours achieves",
                          "time at 100 % of peak"], rows), ""]
        over = [b for b in res["bounds"] if b["required_over_peak"] >= 0.98]
        if over:
            parts += ["**" + ", ".join(b["name"] for b in over) + ": the target needs all of "
                      "this machine's measured float32 matmul peak or more** (a network step is "
                      "not one large matmul: it also has normalisation, activations and layout "
                      "work), so no float32 implementation of the same arithmetic can meet it "
                      "here" + ("; the peer itself runs at " + ", ".join(
                          f"{100 * b['reference_gflops'] / peak:.0f} %" for b in over
                          if b["reference_gflops"]) + " of that peak"
                          if any(b["reference_gflops"] for b in over) else "") + ".", ""]

    d, pd = res.get("digits"), peer.get("digits")
    if d:
        how = (f"{_n(d['reps'], 'repetition')} of {_n(d['steps_per_rep'], 'step')} after "
               f"{_n(d['warmup'], 'warm-up step')}, each repetition timed as a whole (steps "
               "dispatched back to back, as the trainer runs them)")
        parts += ["## Digits train step (the step of `make train`)", "",
                  f"`{d['config']}`: the U-Net ({d['params']:,} params, "
                  f"{'×'.join(map(str, d['image_shape']))}), batch {d['batch']}, built as the "
                  "trainer builds it (`kinds.get(...).build`, `make_loss`, `make_optimizer`, "
                  f"`make_train_step`, `ParallelStep` mode {d['mode']}, "
                  f"{_n(d['steps_per_call'], 'step')} per call) on the real digits batches; {how}."
                  + (f" Model overrides (smoke test only): {d['model_overrides']}."
                     if d.get("model_overrides") else ""), ""]
        rows = [["ours (JAX)", _f(d["steps_per_s"], 2), _rounds_text(d["steps_per_s_rounds"]),
                 _f(d["step_s_median"], 4), _f(d["cores_busy"], 2), _f(d["compile_s"], 1),
                 _f(d["peak_rss_mib"], 0)]]
        if pd:
            rows.append([f"torch {pd['torch_version']} + diffusers", _f(pd["steps_per_s"], 2),
                         _rounds_text(pd["steps_per_s_rounds"]), _f(pd["step_s_median"], 4),
                         _f(pd["cores_busy"], 2), "– (eager)", _f(pd["peak_rss_mib"], 0)])
        parts += [_table(["side", "steps/s (median over rounds)", "steps/s per round",
                          "step s", "cores busy", "compile s", "peak RSS MiB"], rows), ""]
        if pd:
            parts += [f"Ours ÷ torch: **{d['steps_per_s'] / pd['steps_per_s']:.2f}×** "
                      f"(torch: batch {pd['batch']}, AdamW lr {pd['settings']['lr']}, "
                      f"{pd['settings']['decay']} schedule with {pd['settings']['warmup_steps']} "
                      f"warm-up steps, clipping {pd['settings']['grad_clip']}, EMA "
                      f"{pd['settings']['ema_decay']}).", ""]
        else:
            parts += [f"Torch: {peer['reason']}.", ""]

    first = res["train"][0] if res["train"] else {}
    pt = peer.get("train")
    parts += ["## Benchmark train step", "",
              f"Network {first.get('net', '–')} ({first.get('params', 0):,} params, "
              f"{'×'.join(map(str, first.get('image_shape', [])))}), batch "
              f"{first.get('batch', '–')}, AdamW "
              "lr 2e-4, L_simple, linear schedule T = 1000: `make_ddpm_loss` + `make_optimizer` + "
              "`make_train_step` run by `ParallelStep` (jit with the state donated; pmap for "
              "mode pmap); each step includes putting the host batch on the device(s). "
              "Rows measured in rounds alternate with the peer (a round: one timed repetition of "
              "each configuration's long-lived worker process, in turn); their numbers are the "
              "median over the rounds of each round's median step time. "
              f"Achieved FLOP/s = XLA cost-analysis FLOPs of the step ÷ median step time; the "
              f"float32 matmul peak measured in the same run is {_f(peak, 0)} GFLOP/s.", ""]
    rows = [[r["name"], _f(r["images_per_s"], 1), _rounds_text(r["images_per_s_rounds"], 1),
             f"{r['vs_peer']:.2f}×" if r.get("vs_peer") else "–",
             _f(r["step_s_median"], 3), len(r["step_s_all"]), _f(r["cores_busy"], 2),
             _f(r["compile_s"], 1), _f(r["achieved_gflops"], 1),
             f"{100 * r['fraction_of_matmul_peak']:.0f} %" if r["fraction_of_matmul_peak"] else "–",
             _f(r["peak_rss_mib"], 0), _mib(r["xla_memory"])] for r in res["train"]]
    if pt:
        rows.append([f"torch {pt['torch_version']} + diffusers (peer)", _f(pt["images_per_s"], 1),
                     _rounds_text(pt["images_per_s_rounds"], 1), "1.00×",
                     _f(pt["step_s_median"], 3), len(pt["step_s_all"]), _f(pt["cores_busy"], 2),
                     "– (eager)", "–", "–", _f(pt["peak_rss_mib"], 0), "–"])
    parts += [_table(["config", "images/s", "per round", "÷ torch (this run)", "step s (median)",
                      "steps timed", "cores busy", "compile s", "GFLOP/s", "of peak",
                      "peak RSS MiB", "XLA temp MiB"], rows),
              "", "Cores busy = the worker's CPU seconds ÷ wall seconds over the timed steps (2 "
              "is both cores; well below 1.3 on one device, or numbers far from the last run, "
              "suggest that other processes were competing).", ""]
    if not pt:
        parts += [f"Torch: {peer['reason']}.", ""]
    if res["train"] and res["train"][0]["flops_per_step"]:
        parts += [f"XLA counts {res['train'][0]['flops_per_step'] / 1e9:.1f} GFLOP per step "
                  "(1-device executable; multi-device rows use the same count).", ""]
    parts += ["Notes: the N-device rows force N XLA host devices onto this CPU (CPU only; "
              "skipped on a GPU). Peak RSS is `getrusage(RUSAGE_SELF).ru_maxrss` of the worker "
              "process (includes the Python/JAX runtime and compilation); XLA temp is "
              "`compiled.memory_analysis().temp_size_in_bytes` of one device's executable.", ""]

    s, ps = res["sampling"], peer.get("sampling")
    if s:
        how = (f"timed on the first {s['steps_timed']} of the {s['T']} steps and **extrapolated "
               f"linearly ×{s['scale']:.0f}** (every step is one network call of the same size)"
               if s["extrapolated"] else f"all {s['T']} steps timed")
        parts += ["## Sampling (ancestral DDPM)", "",
                  f"Batch {s['batch']}, T = {s['T']}; {how}; median of {s['reps']} repetitions. "
                  "`lax.scan`: `ddpm_denoise`/`ddpm_sample` (one compiled scan over "
                  "`make_ddpm_step`); Python loop: the same jitted step called once per t "
                  f"(`ddpm_sample_loop`'s loop). Both give the same samples (max |Δ| "
                  f"{s['max_abs_diff_scan_vs_loop']:.1e}). Torch: the same ancestral step on the "
                  "diffusers twin under `torch.inference_mode()`, timed the same way, right "
                  "after ours.", ""]
        rows = [[name, _f(s[k]["s_per_run"], 1), _f(s[k]["s_per_image"], 3),
                 _f(s[k]["compile_s"], 1), ", ".join(f"{x:.2f}" for x in s[k]["times_s"]),
                 _mib(s[k]["xla_memory"])]
                for name, k in (("lax.scan", "scan"), ("Python loop", "loop"))]
        if ps:
            rows.append([f"torch {ps['torch_version']} + diffusers (peer)", _f(ps["s_per_run"], 1),
                         _f(ps["s_per_image"], 3), "– (eager)",
                         ", ".join(f"{x:.2f}" for x in ps["times_s"]), "–"])
        parts += [_table(["sampler", f"s per {s['T']} steps", "s/image", "compile s",
                          f"timed runs of {s['steps_timed']} steps (s)", "XLA temp MiB"], rows),
                  "", f"Peak RSS of the sampling worker: {_f(s['peak_rss_mib'], 0)} MiB."
                  + ("" if ps else f" Torch: {peer['reason']}."), ""]

    if res["elbo"]:
        parts += ["## Full ELBO (T = 1000)", "",
                  "`diffusion_elbo` (form ddpm, discretized decoder, β_t variances; vmap over t "
                  "in chunks via `lax.map(batch_size=chunk)`) against a Python loop over "
                  "t = 2..T of one jitted `denoising_matching_term` (t traced) plus the decoder "
                  "and prior terms, with the same keys (both give the same ELBO).", ""]
        rows = []
        for e in res["elbo"].values():
            net = f"{e['net']} ({e['params']:,} params, {'×'.join(map(str, e['image_shape']))})"
            how = (f"T={e['T_timed']} timed ×{e['scale']:.2f} (extrapolated)" if e["extrapolated"]
                   else f"T={e['T']} timed")
            for chunk, c in e["chunked"].items():
                best = " (best)" if int(chunk) == e["best_chunk"] else ""
                rows.append([net, f"vmap chunk {chunk}{best}", e["batch"], _f(c["s_per_elbo"], 2),
                             _f(c["s_per_image"], 3), _f(c["compile_s"], 1), how, e["reps"],
                             _mib(c["xla_memory"])])
            rows.append([net, "Python loop over t", e["batch"], _f(e["loop"]["s_per_elbo"], 2),
                         _f(e["loop"]["s_per_image"], 3), _f(e["loop"]["compile_s"], 1), how,
                         e["loop_reps"], _mib(e["loop"]["xla_memory"])])
        parts += [_table(["network", "method", "batch", "s per ELBO", "s/image", "compile s",
                          "timing", "reps", "XLA temp MiB"], rows), ""]
        notes = []
        for key, e in res["elbo"].items():
            notes.append(f"{key}: loop ÷ best vmap = {e['loop_over_best_chunked']:.2f}×, "
                         "max |ELBO_vmap − ELBO_loop| = "
                         f"{e['max_abs_diff_chunked_vs_loop_nats']:.1e}"
                         f" nats, worker peak RSS {_f(e['peak_rss_mib'], 0)} MiB")
        parts += ["; ".join(notes) + ".", ""]
        big = res["elbo"].get("benchmark")
        if big and big["extrapolated"]:
            parts += [f"The benchmark U-Net ELBO is **extrapolated**: both methods were timed on a "
                      f"linear schedule with T = {big['T_timed']} ({big['T_timed']} network "
                      f"evaluations of batch {big['batch']}) and scaled by {big['scale']:.2f} "
                      f"to the {big['T']} evaluations of T = {big['T']}.", ""]

    if res["variants"]:
        base = next((r for r in res["train"] if r["devices"] == 1), None)
        parts += ["## What moves the train-step number (variants, 1 device unless named)", "",
                  "Baseline: the 1-device row above "
                  f"({_f(base['images_per_s'], 1) if base else '–'}"
                  " images/s, YNN flag on, float32, no remat).", ""]
        rows = [[r["name"], _f(r["images_per_s"], 1), _f(r["step_s_median"], 3),
                 f"{r['vs_baseline']:.2f}×" if r["vs_baseline"] else "–", _f(r["cores_busy"], 2),
                 _f(r["compile_s"], 1), _f(r["peak_rss_mib"], 0), _mib(r["xla_memory"]),
                 f"`{r['xla_flags']}`" if r["xla_flags"] else "(none)"]
                for r in res["variants"]]
        parts += [_table(["variant", "images/s", "step s", "vs baseline", "cores busy",
                          "compile s", "peak RSS MiB", "XLA temp MiB", "XLA_FLAGS"], rows), ""]

    parts += ["## Notes (computed from this run)", ""]
    parts += [f"- {note}" for note in findings(res)]
    parts.append("")
    return "\n".join(parts)


def findings(res: dict) -> list[str]:
    """Notes computed from this run's numbers (so they stay true on whichever machine ran it)."""
    notes = []
    train = {(r["mode"], r["devices"]): r for r in res["train"]}
    variants = {r["name"]: r for r in res["variants"]}
    base = train.get(("none", 1))

    def ips(row):
        return f"{row['images_per_s']:.1f} images/s ({row['step_s_median']:.2f} s/step, " \
               f"{row['cores_busy']:.2f} cores busy)"

    if base and base["cores_busy"] < 1.2 or res["loadavg_start"][0] > 1.5:
        notes.append(
            f"**Contended run**: load average {res['loadavg_start'][0]:.1f} at the start"
            + (f", and the 1-device step kept only {base['cores_busy']:.2f} cores busy" if base
               else "")
            + ". Other processes shared the 2 cores, so absolute numbers are low and comparisons "
            "between rows (measured at different times) are unreliable; multi-threaded "
            "configurations suffer most. Rerun on an idle machine.")
    if base:
        notes.append(f"Baseline train step, 1 device with the YNN flag: {ips(base)}.")
        no_ynn = variants.get("no YNN flag (jaxlib default)")
        if no_ynn:
            notes.append(
                f"YNN flag: without it the step runs at {ips(no_ynn)}, i.e. the flag gives "
                f"{base['images_per_s'] / no_ynn['images_per_s']:.2f}×. By default this jaxlib "
                "sends every convolution to a YNNPACK fusion that runs on one thread; the flag "
                "routes convolutions and dots to XLA's Eigen path, which uses both cores.")
        for mode in ("sharding", "pmap"):
            two, eight = train.get((mode, 2)), train.get((mode, 8))
            if two:
                text = (f"{mode}, 2 forced host devices (one per core): {ips(two)}, "
                        f"{two['images_per_s'] / base['images_per_s']:.2f}× the 1-device step")
                if eight:
                    text += (f"; 8 devices: {eight['images_per_s']:.1f} images/s "
                             f"({eight['images_per_s'] / base['images_per_s']:.2f}×; 4 device "
                             "programs per core: overhead, not a speed-up)")
                notes.append(text + ".")
        both = variants.get("no YNN flag, 2 devices, sharding")
        if both and no_ynn:
            notes.append(
                f"Without the flag, 2 devices with sharding give {both['images_per_s']:.1f} "
                f"images/s ({both['images_per_s'] / no_ynn['images_per_s']:.2f}× the 1-device "
                "no-flag step): splitting the batch over one device per core recovers the "
                "second core the same way; the two levers do not stack.")
        for name, why in (
            ("bf16 compute (UNet dtype=bfloat16)",
             "parameters stay float32 and are cast each step; XLA's CPU convolutions gain no "
             "speed from bf16 here"),
            ("remat ResBlocks (jax.checkpoint)",
             "recomputing each ResBlock in the backward pass adds FLOPs; memory is not the "
             "bottleneck at this size"),
            ("opt preset FAST_RUNTIME", "XLA CPU's optimisation preset"),
            ("memory-optimized scheduler", "XLA CPU's memory-optimized HLO scheduler"),
        ):
            v = variants.get(name)
            if v:
                notes.append(f"{name}: {ips(v)}, {v['vs_baseline']:.2f}× the baseline "
                             f"({why}; XLA temp {_mib(v['xla_memory'])} MiB vs "
                             f"{_mib(base['xla_memory'])} MiB).")
    s = res["sampling"]
    if s:
        r = s["loop_over_scan"]
        verdict = ("the two are equal within timing noise: one network call per step dominates, "
                   "so the per-step dispatch the scan saves does not show" if abs(r - 1) < 0.1
                   else "the scan is faster: it saves one host dispatch per step" if r > 1
                   else "the loop was faster in this run")
        notes.append(f"Sampling: the Python loop takes {r:.2f}× the scan's time; {verdict}.")
    for key, e in res["elbo"].items():
        best = e["chunked"][str(e["best_chunk"])]
        notes.append(
            f"ELBO, {key} (batch {e['batch']}, {'×'.join(map(str, e['image_shape']))}): "
            f"chunked vmap {best['s_per_image']:.3g} "
            f"s/image (chunk {e['best_chunk']}) vs Python loop {e['loop']['s_per_image']:.3g} "
            f"s/image: loop ÷ vmap = {e['loop_over_best_chunked']:.2f}×.")
    for key in ("mlp32", "mlp"):
        e = res["elbo"].get(key)
        floor = e.get("floor") if e else None
        if floor:
            best = e["chunked"][str(e["best_chunk"])]["s_per_elbo"]
            net_s, loop_s = floor["network_s"], e["loop"]["s_per_elbo"]
            notes.append(
                f"ELBO floor, {key} ({e['params']:,} params): the vmapped ELBO takes "
                f"{1e3 * best:.1f} ms, of which the network itself (all "
                f"{(e['T'] - 1) * e['batch']:,} noisy inputs in one call) takes "
                f"{1e3 * net_s:.1f} ms and the noise draws, posterior and KL the other "
                f"{1e3 * max(best - net_s, 0.0):.1f} ms. The loop takes {1e3 * loop_s:.0f} ms "
                f"({1e6 * loop_s / (e['T'] - 1):.0f} µs per t, mostly the host dispatch of one "
                "jitted call), so even an ELBO that cost nothing but its network calls could beat "
                f"the loop by at most {loop_s / net_s:.1f}× here; ours reaches "
                f"{e['loop_over_best_chunked']:.1f}×.")
    flat, hwc = res["elbo"].get("mlp"), res["elbo"].get("mlp_8x8x1")
    if flat and hwc:
        f_best = flat["chunked"][str(flat["best_chunk"])]["s_per_elbo"]
        h_best = hwc["chunked"][str(hwc["best_chunk"])]["s_per_elbo"]
        notes.append(
            f"Layout: the same MLP ELBO on 8×8×1 images takes {h_best / f_best:.2f}× the time "
            "(vmap) of flat 64-vectors. XLA CPU runs elementwise fusions on arrays whose minor "
            "dimension is 1 (NHWC with C = 1) several times slower, so the ELBO terms flatten "
            "the event axes to (B, D) before their elementwise work (`flatten_events`); what "
            "remains of the difference is the work done on the (…, 8, 8, 1) arrays themselves.")
    if any(e["loop_over_best_chunked"] < 2 for e in res["elbo"].values()):
        notes.append(
            "Where vmap over t gains less than 2×: the loop's only extra cost is one host "
            "dispatch per t, so vmap can only win by making the per-t work cheaper per "
            "example. For the U-Nets the network is nearly all of that work, and a "
            "convolution's cost per image hardly falls with a larger batch on this CPU (the "
            "small MLPs: see the ELBO floor notes).")
    notes.append(
        "Convolutions dominate the U-Net step (PLATFORM.md profile: ~67 % convolutions, "
        "~9 % layout transposes, ~8 % GroupNorm, dots < 1 %).")
    return notes
