"""Turns the worker records of ``bench/run.py`` into ``results.json`` and ``results.md``.

Plain Python: the orchestrator never imports JAX.
"""

from __future__ import annotations

import math

# PyTorch 2.13 + diffusers, same network and sizes, measured on this CPU (PLATFORM.md and the
# benchmark issue).
REFERENCE = {
    "source": "PyTorch 2.13 + diffusers UNet2DModel on this 2-core CPU (oneDNN)",
    "train_images_per_s": 89.5,
    "sample_s_per_image": 4.84,
    "elbo_s_per_image": 4.76,
}
# Within this relative margin a "never slower" comparison counts as a tie (timing noise).
NOISE = 0.03


def _ok(record):
    return record.get("result") if "error" not in record else None


def _train_row(record, flops_1dev, peak_gflops):
    r = record["result"]
    own = r.get("xla_flops_per_step")
    # Cost analysis of a multi-device executable counts one shard: use the 1-device count of the
    # same global batch for those (same network, same work).
    flops = own if r["devices"] == 1 and own else flops_1dev
    achieved = flops / r["step_s_median"] / 1e9 if flops else None
    return {
        "name": record["name"], "net": r["net"], "params": r["params"],
        "image_shape": r["image_shape"], "mode": r["mode"], "devices": r["devices"],
        "dtype": r["dtype"],
        "remat": r["remat"], "xla_flags": r["xla_flags"], "batch": r["batch"],
        "images_per_s": r["images_per_s"], "step_s_median": r["step_s_median"],
        "step_s_all": r["step_s_all"], "cores_busy": r["cores_busy"], "compile_s": r["compile_s"],
        "first_call_s": r["first_call_s"], "flops_per_step": flops,
        "xla_flops_per_step_own": own, "achieved_gflops": achieved,
        "fraction_of_matmul_peak": achieved / peak_gflops if achieved and peak_gflops else None,
        "peak_rss_mib": r["peak_rss_mib"], "xla_memory": r["xla_memory"],
        "loss_finite": r["loss_finite"], "worker_wall_s": record["wall_s"],
    }


def _target(name, measured, reference, ratio, target, unit, *, tie_ok=False):
    met = ratio >= target or (tie_ok and ratio >= target * (1 - NOISE))
    return {"name": name, "measured": measured, "reference": reference, "unit": unit,
            "ratio": ratio, "target_ratio": target, "met": bool(met)}


def build_results(meta: dict, records: list[dict]) -> dict:
    """The results JSON: per-measurement sections, ratios against the targets, failures."""
    out = dict(meta)
    out["reference"] = REFERENCE
    out["failures"] = [{"group": r["group"], "name": r.get("name", r["worker"]),
                        "error": r["error"]} for r in records if "error" in r]

    peaks = [dict(_ok(r), name=r["name"]) for r in records if r["group"] == "peak" and _ok(r)]
    out["matmul_peak"] = peaks
    peak_gflops = max((p["gflops_median"] for p in peaks), default=None)
    out["matmul_peak_gflops"] = peak_gflops
    out["conv3x3_gflops"] = max((p["conv3x3_gflops_median"] for p in peaks
                                 if p.get("conv3x3_gflops_median")), default=None)

    train = [r for r in records if r["group"] == "train" and _ok(r)]
    base = next((r for r in train if r["result"]["devices"] == 1), None)
    flops_1dev = base["result"]["xla_flops_per_step"] if base else None
    out["train"] = [_train_row(r, flops_1dev, peak_gflops) for r in train]
    base_ips = base["result"]["images_per_s"] if base else None
    out["variants"] = []
    for r in records:
        if r["group"] == "variant" and _ok(r):
            row = _train_row(r, flops_1dev, peak_gflops)
            row["vs_baseline"] = row["images_per_s"] / base_ips if base_ips else None
            out["variants"].append(row)

    sample = next((_ok(r) for r in records if r["group"] == "sample" and _ok(r)), None)
    if sample:
        sample = dict(sample)
    out["sampling"] = sample
    out["elbo"] = {r["net"]: _ok(r) for r in records if r["group"] == "elbo" and _ok(r)}

    targets = []
    if out["train"]:
        best = max(out["train"], key=lambda row: row["images_per_s"])
        ips = best["images_per_s"]
        targets.append(_target(f"train step images/s (best config: {best['name']})", ips,
                               REFERENCE["train_images_per_s"],
                               ips / REFERENCE["train_images_per_s"], 1.5, "images/s"))
        if base_ips:
            targets.append(_target("train step images/s (1 device)", base_ips,
                                   REFERENCE["train_images_per_s"],
                                   base_ips / REFERENCE["train_images_per_s"], 1.5, "images/s"))
    if sample:
        s = sample["scan"]["s_per_image"]
        targets.append(_target("1000-step sampling s/image (lax.scan), speed-up", s,
                               REFERENCE["sample_s_per_image"],
                               REFERENCE["sample_s_per_image"] / s, 2.0, "s/image"))
        targets.append(_target("scan sampler vs Python loop over the jitted step (loop/scan)",
                               s, sample["loop"]["s_per_image"], sample["loop_over_scan"], 1.0,
                               "s/image", tie_ok=True))
    big = out["elbo"].get("benchmark")
    if big:
        best = big["chunked"][str(big["best_chunk"])]["s_per_image"]
        targets.append(_target(f"full T=1000 ELBO s/image (chunked vmap, chunk {big['best_chunk']})"
                               ", speed-up", best, REFERENCE["elbo_s_per_image"],
                               REFERENCE["elbo_s_per_image"] / best, 3.0, "s/image"))
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


def arithmetic_bounds(out: dict) -> list[dict]:
    """What each speed target on the U-Net asks of this CPU: the FLOP/s it needs (XLA's count of
    the work ÷ the target time) against the float32 matmul peak measured in this run."""
    bounds = []
    peak_gflops = out.get("matmul_peak_gflops")
    one_device = next((r for r in out["train"] if r["devices"] == 1), None)
    train_flops = one_device["flops_per_step"] if one_device else None
    if not peak_gflops:
        return bounds

    def row(name, flops, target_s, reference_s, ours_s, unit_per):
        """reference_s None: a target set against our own baseline, not the reference."""
        need = flops / target_s / 1e9
        return {"name": name, "gflop": flops / 1e9, "unit": unit_per,
                "target_s": target_s, "required_gflops": need,
                "reference_gflops": flops / reference_s / 1e9 if reference_s else None,
                "ours_gflops": flops / ours_s / 1e9 if ours_s else None,
                "best_s_at_peak": flops / (peak_gflops * 1e9),
                "required_over_peak": need / peak_gflops}

    best_train = max(out["train"], key=lambda r: r["images_per_s"]) if out["train"] else None
    if train_flops and best_train:
        batch = best_train["batch"]
        target_ips = 1.5 * REFERENCE["train_images_per_s"]
        bounds.append(row(f"train step (batch {batch})", train_flops, batch / target_ips,
                          batch / REFERENCE["train_images_per_s"], best_train["step_s_median"],
                          "step"))
    s = out["sampling"]
    if s and s.get("xla_flops_per_step"):
        per_image = s["xla_flops_per_step"] * s["T"] / s["batch"]
        bounds.append(row(f"{s['T']}-step sampling (batch {s['batch']})", per_image,
                          REFERENCE["sample_s_per_image"] / 2.0, REFERENCE["sample_s_per_image"],
                          s["scan"]["s_per_image"], "image"))
    big = out["elbo"].get("benchmark")
    if big and big.get("term_xla_flops"):
        # T − 1 denoising terms, each one network call on the batch, plus the decoder term.
        per_image = big["term_xla_flops"] * big["T"] / big["batch"]
        ours = big["chunked"][str(big["best_chunk"])]["s_per_image"]
        bounds.append(row(f"full T = {big['T']} ELBO (batch {big['batch']})", per_image,
                          REFERENCE["elbo_s_per_image"] / 3.0, REFERENCE["elbo_s_per_image"],
                          ours, "image"))
        # Our own baseline: the vmapped bound ≥ 2× the Python loop over t of the same term.
        loop = big["loop"]["s_per_image"]
        bounds.append(row(f"full T = {big['T']} ELBO at 2× our Python loop", per_image,
                          loop / 2.0, None, ours, "image"))
    return bounds


def targets_table(res: dict) -> str:
    """The markdown table of every target: ours, the reference, the ratio, met or not."""
    rows = [[t["name"], f"{_f(t['measured'], 3)} {t['unit']}", f"{_f(t['reference'], 3)}",
             f"{t['ratio']:.2f}×", f"≥ {t['target_ratio']}×", "**yes**" if t["met"] else "no"]
            for t in res["targets"]]
    return _table(["measurement", "ours", "reference", "ratio", "target", "met"], rows)


def markdown(res: dict) -> str:
    m = res["machine"]
    quick = res["mode"] == "quick"
    parts = [
        "# diffusion_jax benchmark" + (" (QUICK smoke sizes: numbers are not comparable)" if quick
                                       else ""),
        "",
        f"Generated by `make bench` (`bench/run.py`{' --quick' if quick else ''}) on "
        f"{res['started_utc']}: {m['cpu_count']} CPU cores ({m['cpu_model'] or 'unknown CPU'}), "
        f"jax {m['versions'].get('jax')}, flax {m['versions'].get('flax')}, "
        f"optax {m['versions'].get('optax')}, Python {m['python']}.",
        f"Total runtime **{res['total_runtime_s']:.0f} s**. Load average (1/5/15 min) at the "
        f"start {' / '.join(f'{x:.2f}' for x in res['loadavg_start'])}, at the end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_end'])} (the bench itself keeps ~2 cores busy; "
        "a 1-minute load above ~1 at the start means another process was competing).",
        f"Every worker runs with `XLA_FLAGS={res['base_xla_flags']}` (plus the forced host device "
        "count where more than 1 device) unless the table says otherwise. Times are wall-clock "
        "medians; compile time (trace + lower + compile) is reported apart and excluded.",
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

    ref = res["reference"]
    parts += [f"## Against the targets (reference: {ref['source']})", ""]
    parts += [targets_table(res), "",
              "Ratios: images/s ours ÷ reference for training; reference ÷ ours (a speed-up) for "
              "s/image; for our own baselines the Python loop's time ÷ the compiled version's.",
              ""]

    peak = res["matmul_peak_gflops"]
    if res.get("bounds"):
        conv = res.get("conv3x3_gflops")
        parts += ["## What the targets ask of this CPU", "",
                  "Each target is a time for a fixed amount of arithmetic: XLA's cost analysis "
                  "counts the FLOPs of the work (the same network as the reference, same "
                  "sizes, every timestep), so the target time fixes the FLOP/s it needs. This "
                  f"run measured a float32 matmul peak of **{_f(peak, 0)} GFLOP/s** (an "
                  f"n = {res['matmul_peak'][0]['n']} square `jnp.dot` on both cores)"
                  + (f" and {_f(conv, 0)} GFLOP/s for a single 3×3 convolution (64 → 64 "
                     "channels, 28×28, batch 64)" if conv else "") + ".", ""]
        rows = [[b["name"], f"{b['gflop']:,.1f} per {b['unit']}",
                 f"{b['target_s']:.3f} s", f"**{b['required_gflops']:.0f}**",
                 f"{100 * b['required_over_peak']:.0f} %", _f(b["reference_gflops"], 0),
                 _f(b["ours_gflops"], 0), f"{b['best_s_at_peak']:.3f} s"]
                for b in res["bounds"]]
        parts += [_table(["work", "XLA FLOPs", "target time", "GFLOP/s needed",
                          "of measured peak", "reference achieves", "ours achieves",
                          "time at 100 % of peak"], rows), ""]
        over = [b for b in res["bounds"] if b["required_over_peak"] >= 0.98]
        if over:
            parts += ["**" + ", ".join(b["name"] for b in over) + ": the target needs all of "
                      "this CPU's measured float32 matmul peak or more** (a network step is not "
                      "one large matmul: it also has normalisation, activations and layout "
                      "work), so no float32 implementation of the reference's arithmetic (direct "
                      "convolutions, every timestep) can meet it here; the reference itself runs at "
                      + ", ".join(f"{100 * b['reference_gflops'] / peak:.0f} %" for b in over
                                  if b["reference_gflops"])
                      + " of that peak. Only doing less arithmetic (e.g. Winograd convolutions) "
                      "or cheaper arithmetic (bf16 dot products, which this CPU has) could; "
                      "XLA's CPU convolutions gain nothing from bf16 (see the variants).", ""]

    first = res["train"][0] if res["train"] else {}
    parts += ["## Train step", "",
              f"Network {first.get('net', '–')} ({first.get('params', 0):,} params, "
              f"{'×'.join(map(str, first.get('image_shape', [])))}), batch "
              f"{first.get('batch', '–')}, AdamW "
              "lr 2e-4, L_simple, linear schedule T = 1000: `make_ddpm_loss` + `make_optimizer` + "
              "`make_train_step` run by `ParallelStep` (jit with the state donated; pmap for "
              "mode pmap); each step includes putting the host batch on the device(s). "
              f"Achieved FLOP/s = XLA cost-analysis FLOPs of the step ÷ median step time; the "
              f"float32 matmul peak measured in the same run is {_f(peak, 0)} GFLOP/s.", ""]
    rows = [[r["name"], _f(r["images_per_s"], 1), _f(r["step_s_median"], 3),
             len(r["step_s_all"]), _f(r["cores_busy"], 2), _f(r["compile_s"], 1),
             _f(r["achieved_gflops"], 1),
             f"{100 * r['fraction_of_matmul_peak']:.0f} %" if r["fraction_of_matmul_peak"] else "–",
             _f(r["peak_rss_mib"], 0), _mib(r["xla_memory"])] for r in res["train"]]
    parts += [_table(["config", "images/s", "step s (median)", "steps timed", "cores busy",
                      "compile s", "GFLOP/s", "of peak", "peak RSS MiB", "XLA temp MiB"], rows),
              "", "Cores busy = the worker's CPU seconds ÷ wall seconds over the timed steps (2 "
              "is both cores; well below 1.3 on one device, or numbers far from the last run, "
              "suggest that other processes were competing).", ""]
    if res["train"] and res["train"][0]["flops_per_step"]:
        parts += [f"XLA counts {res['train'][0]['flops_per_step'] / 1e9:.1f} GFLOP per step "
                  "(1-device executable; multi-device rows use the same count).", ""]
    parts += ["Notes: the N-device rows force N XLA host devices onto this 2-core CPU; with 8 "
              "devices each core runs 4 device programs, so the 8-device rows measure overhead, "
              "not a speed-up. Peak RSS is `getrusage(RUSAGE_SELF).ru_maxrss` of the worker "
              "process (includes the Python/JAX runtime and compilation); XLA temp is "
              "`compiled.memory_analysis().temp_size_in_bytes` of one device's executable.", ""]

    s = res["sampling"]
    if s:
        how = (f"timed on the first {s['steps_timed']} of the {s['T']} steps and **extrapolated "
               f"linearly ×{s['scale']:.0f}** (every step is one network call of the same size)"
               if s["extrapolated"] else f"all {s['T']} steps timed")
        parts += ["## Sampling (ancestral DDPM)", "",
                  f"Batch {s['batch']}, T = {s['T']}; {how}; median of {s['reps']} repetitions. "
                  "`lax.scan`: `ddpm_denoise`/`ddpm_sample` (one compiled scan over "
                  "`make_ddpm_step`); Python loop: the same jitted step called once per t "
                  f"(`ddpm_sample_loop`'s loop). Both give the same samples (max |Δ| "
                  f"{s['max_abs_diff_scan_vs_loop']:.1e}).", ""]
        rows = [[name, _f(s[k]["s_per_run"], 1), _f(s[k]["s_per_image"], 3),
                 _f(s[k]["compile_s"], 1), ", ".join(f"{x:.2f}" for x in s[k]["times_s"]),
                 _mib(s[k]["xla_memory"])]
                for name, k in (("lax.scan", "scan"), ("Python loop", "loop"))]
        parts += [_table(["sampler", f"s per {s['T']} steps", "s/image", "compile s",
                          f"timed runs of {s['steps_timed']} steps (s)", "XLA temp MiB"], rows),
                  "", f"Peak RSS of the sampling worker: {_f(s['peak_rss_mib'], 0)} MiB.", ""]

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
