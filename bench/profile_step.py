"""Per-op profile of ONE DDPM train step, ours (JAX/XLA:CPU) beside PyTorch + diffusers.

    .venv/bin/python bench/profile_step.py --net digits            # both sides, ~1.5 min
    .venv/bin/python bench/profile_step.py --net benchmark --side jax

One train step = forward + backward + gradient clipping + AdamW + EMA on one batch of 64:

- ours: ``make_train_step(kinds.get("ddpm").make_loss(model, cfg, num_levels=L),
  make_optimizer(cfg.optim, ...), ema_decay=..., global_batch=64)`` jitted with the state
  donated (``ParallelStep`` mode "none", as the trainer and ``bench/measure.py`` run it), with
  ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot``.
  "digits" is ``experiments/configs/ddpm_digits.py`` (the main job, 8×8×1, 651,041 params),
  "benchmark" is ``unet_benchmark()`` on 28×28×1 with AdamW lr 2e-4 (``measure.train_task``).
- torch: ``bench/peer_torch.make_train_step(net)``, the same networks as diffusers
  ``UNet2DModel``s with the same parameter counts, eager mode, CPU.

Each side runs in its own subprocess (XLA_FLAGS must be set before JAX starts; no torch in the
JAX process and no JAX in the torch one): compile / build, warm-up steps, ``--steps`` steps timed
one by one without the profiler (the wall time per step), then ``--steps`` steps under the
profiler, averaged.

How the JAX side is read. ``jax.profiler.trace`` writes an XSpace (``*.xplane.pb``), read here
with ``jax.profiler.ProfileData`` (no xprof needed). XLA:CPU's thunk executor records, for each
thunk (one HLO instruction of the compiled module: a fusion, a convolution, a dot, a copy, ...),
a start event (stats ``hlo_op``, ``run_id``, producer id ``_p``) and, when the thunk's async
result becomes available, an ``end: <op>`` event with the same id as consumer ``_c``.
Convolutions run asynchronously on the Eigen pool, so [start, end] is the thunk's true span,
and independent thunks overlap in time (the executor runs the dependency graph concurrently on
2 cores). Each moment of a step's busy time is therefore split equally among the thunks running
at that moment (container thunks, i.e. the ``conditional``/``while`` of ``apply_if_finite`` and
the RNG loops, get time only when none of their children runs), so the per-op times add up to
the step's busy time (the union of all thunk spans). Op names are mapped to the compiled HLO
(``jit(...).lower(...).compile().as_text()``): shapes, convolution dim_labels / windows, and
metadata op_name (``jvp(UNet)/down0_block0/conv1/...`` forward, ``transpose(jvp(UNet))/...``
backward). Convolutions: forward and backward-input (op_name, lhs_dilate) vs backward-filter
(window larger than the output's spatial size: the activation is the window); layer = input
H×W, Cin → Cout, kernel, stride. A fusion goes to the category most of its instructions come
from (GroupNorm's apply fused with the SiLU after it counts as GroupNorm, a residual add fused
with a layout transpose as elementwise).

How the torch side is read. ``torch.profiler.profile`` (CPU activities, record_shapes), with a
``record_function`` range around each module's forward (hooks added only for the profiled
steps). Every event's self CPU time goes to the category of the op called from Python that
contains it (``aten::conv2d`` holds ``mkldnn_convolution``, ``empty``, ...); backward events to
the category of their forward op (matched by autograd sequence number) and so to the same
module. ``aten::convolution_backward`` computes the input and the filter gradient in one op;
its time is split between them by the ratio of the two computed apart
(``output_mask`` (1,0,0) vs (0,1,1)) on the same shapes, timed after the profile.

"host time between steps" = the profiled wall time per step (the steps run in a Python loop,
each ending in a block/return) minus the profiled busy time: on our side the time with no thunk
running (Python dispatch, argument handling, the executable's launch and the wait for its end),
on torch's the Python between ops (module code, hooks, optimizer bookkeeping outside aten ops).
Profiling adds time per op on both sides (per thunk here, per op and per module range there),
so the rows add up to the profiled step; the unprofiled median wall per step is the last row,
and "wall without the profiler − busy" (the host time as a difference of two runs) is printed
above the table; it comes out near zero or negative when the profiler's own cost exceeds the
host time.

Writes ``bench/profile/<net>.md`` (the category table, convolutions by layer, the top 15 ops of
each side) and ``bench/profile/<net>.json``; prints the markdown. ``--keep DIR`` keeps the XLA
trace and the HLO text (large; never commit them).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
YNN_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
BATCH = 64
RESULT_TAG = "PROFILE_RESULT "

# (key, label) in table order; "host" is computed, not profiled.
CATEGORIES = [
    ("conv_fwd", "convolutions 3×3, forward"),
    ("conv_bwd_input", "convolutions 3×3, backward-input"),
    ("conv_bwd_filter", "convolutions 3×3, backward-filter"),
    ("dense", "dense layers + 1×1 convs (time embedding, shortcuts)"),
    ("groupnorm", "GroupNorm (fwd+bwd)"),
    ("elementwise", "SiLU / elementwise (fusions)"),
    ("attention", "attention (qkv/out projections, dots, softmax)"),
    ("layout", "layout transposes / copies / concat / upsample"),
    ("loss", "loss, q_sample, metrics"),
    ("rng", "RNG"),
    ("optimizer", "grad clip + AdamW + EMA"),
    ("other", "other"),
]
CATEGORY_KEYS = [k for k, _ in CATEGORIES]
LABELS = dict(CATEGORIES, host="host time between steps (no op running)")


def _loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# =========================================================================== JAX side


def _jax_setup_env() -> None:
    os.environ["XLA_FLAGS"] = YNN_FLAGS  # replaces any inherited value, as bench/run.py does
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _jax_build(net: str):
    """(model, loss_fn, optimizer, ema_decay, image_shape, num_levels) as the trainer builds them."""
    import importlib.util

    from diffusion_jax.models import unet_benchmark
    from diffusion_jax.training import kinds
    from diffusion_jax.training.config import base_config
    from diffusion_jax.training.optim import make_optimizer

    kind = kinds.get("ddpm")
    if net == "digits":
        spec = importlib.util.spec_from_file_location(
            "ddpm_digits_config", ROOT / "experiments" / "configs" / "ddpm_digits.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cfg = module.get_config()
        image_shape, num_levels = (8, 8, 1), 17  # the embedded digits: levels 0..16
        model = kind.build(cfg, image_shape)
    else:  # bench/measure.py's train_task
        cfg = base_config("ddpm")
        cfg.optim.optimizer, cfg.optim.lr, cfg.diffusion.loss = "adamw", 2e-4, "l_simple"
        image_shape, num_levels = (28, 28, 1), 256
        model = unet_benchmark()
    loss_fn = kind.make_loss(model, cfg, num_levels=num_levels)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    return kind, model, loss_fn, optimizer, float(cfg.optim.ema_decay), image_shape, num_levels


def jax_worker(net: str, steps: int, warmup: int, keep: str | None) -> dict:
    _jax_setup_env()
    import jax
    import numpy as np

    from diffusion_jax.models import num_params
    from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step

    kind, model, loss_fn, optimizer, ema_decay, image_shape, num_levels = _jax_build(net)
    params = kind.init_params(model, image_shape, jax.random.key(0, impl="rbg"))
    state = jax.jit(lambda p, k: create_train_state(p, optimizer, k))(params, jax.random.key(1))
    runner = ParallelStep(
        lambda axis_name: make_train_step(loss_fn, optimizer, ema_decay=ema_decay,
                                          global_batch=BATCH, axis_name=axis_name),
        mode="none", global_batch=BATCH)
    state = runner.put_state(state)
    levels = np.random.default_rng(0).integers(0, num_levels, (BATCH, *image_shape))
    host_batch = {"image": (levels / (num_levels - 1) * 2.0 - 1.0).astype(np.float32)}

    start = time.perf_counter()
    compiled = runner._step.lower(state, runner.put_batch(host_batch)).compile()
    compile_s = time.perf_counter() - start
    hlo_text = compiled.as_text()

    for _ in range(warmup):
        state, metrics = jax.block_until_ready(runner(state, host_batch))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(runner(state, host_batch))
        times.append(time.perf_counter() - start)

    trace_dir = Path(tempfile.mkdtemp(prefix="profile_step_"))
    try:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # no Python function events: less overhead per step
        jax.profiler.start_trace(str(trace_dir), profiler_options=options)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = jax.block_until_ready(runner(state, host_batch))
        profiled_s = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        xplanes = sorted(trace_dir.rglob("*.xplane.pb"))
        if not xplanes:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {trace_dir}.")
        thunks = _read_thunks(str(xplanes[-1]))
        if keep:
            out = Path(keep)
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(xplanes[-1], out / f"{net}_jax.xplane.pb")
            (out / f"{net}_jax_hlo.txt").write_text(hlo_text)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)

    hlo = parse_hlo(hlo_text)
    per_op, busy_ms, runs = _attribute(thunks, hlo)
    gaps_ms = per_op.pop(_GAPS)
    result = _jax_summarise(per_op, hlo, runs)
    result["gaps_inside_executable_ms"] = gaps_ms
    wall_ms = statistics.median(times) * 1e3
    result.update({
        "side": "jax", "net": net, "params": int(num_params(params)), "batch": BATCH,
        "image_shape": list(image_shape), "steps": steps, "warmup": warmup,
        "compile_s": compile_s, "wall_ms": wall_ms, "wall_ms_all": [t * 1e3 for t in times],
        "wall_profiled_ms": profiled_s * 1e3, "busy_ms": busy_ms,
        "host_ms": profiled_s * 1e3 - busy_ms,
        "wall_minus_busy_ms": wall_ms - busy_ms,
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
        "versions": {"jax": jax.__version__}, "xla_flags": YNN_FLAGS, "loadavg": _loadavg(),
        "thunks_per_step": len(thunks) / max(runs, 1),
    })
    return result


def _read_thunks(path: str) -> list[tuple]:
    """[(run_id, op, start_ns, end_ns)] of every thunk executed while tracing.

    A start event carries stats hlo_op/run_id and producer id ``_p``; its ``end: <op>`` event
    carries the same id as consumer ``_c`` (ThunkExecutor::TracedExecute)."""
    from jax.profiler import ProfileData

    plane = ProfileData.from_file(path).find_plane_with_name("/host:CPU")
    if plane is None:
        raise RuntimeError(f"no /host:CPU plane in {path}.")
    starts, ends = {}, {}
    for line in plane.lines:
        for event in line.events:
            stats = dict(event.stats)
            if "hlo_op" in stats and "_p" in stats:
                starts[stats["_p"]] = (stats["run_id"], stats["hlo_op"], event.start_ns)
            elif event.name.startswith("end: ") and "_c" in stats:
                ends[stats["_c"]] = event.start_ns
    thunks = [(run, op, t0, ends[pid]) for pid, (run, op, t0) in starts.items() if pid in ends]
    if not thunks:
        raise RuntimeError("the trace holds no XLA:CPU thunk events (hlo_op / end: pairs); "
                           "this jaxlib's profiler may record them differently.")
    return thunks


_GAPS = "(gaps inside the executable)"


def _attribute(thunks, hlo) -> tuple[dict, float, int]:
    """Per-op ms per step by splitting each moment among the thunks running then; busy ms/step."""
    by_run = collections.defaultdict(list)
    for run, op, t0, t1 in thunks:
        by_run[run].append((t0, t1, op))
    per_op = collections.defaultdict(float)
    busy = span = 0.0
    containers = {name for name, inst in hlo["inst"].items()
                  if inst["op"] in ("conditional", "while", "call", "async-start", "async-done")}
    for events in by_run.values():
        span += (max(t1 for _, t1, _ in events) - min(t0 for t0, _, _ in events)) / 1e6
        edges = []
        for t0, t1, op in events:
            edges.append((t0, 1, op))
            edges.append((max(t1, t0), -1, op))
        edges.sort(key=lambda e: (e[0], e[1]))
        active = collections.Counter()
        last = None
        for t, kind, op in edges:
            if last is not None and t > last and active:
                dt = (t - last) / 1e6  # ns → ms
                busy += dt
                leaves = [o for o in active if o not in containers]
                share = leaves or list(active)
                for o in share:
                    per_op[o] += dt * active[o] / sum(active[x] for x in share)
            active[op] += kind
            if active[op] <= 0:
                del active[op]
            last = t
    runs = len(by_run)
    per_op = {op: ms / runs for op, ms in per_op.items()}
    per_op[_GAPS] = (span - busy) / runs  # no thunk running between a run's first and last
    return per_op, busy / runs, runs


# --------------------------------------------------------------------------- HLO parsing

_INST = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_COMP = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{$")
_DATA_MOVEMENT = {"transpose", "copy", "concatenate", "slice", "pad", "reshape", "reverse",
                  "dynamic-slice", "dynamic-update-slice", "gather", "iota"}
_NO_VOTE = {"parameter", "constant", "bitcast", "broadcast", "tuple", "get-tuple-element"}
_RNG = re.compile(r"threefry|_normal|_uniform|_randint|random_|rng_bit|rng\b")
_NORM_PATH = r"/(norm\d*|norm_out)/"  # the U-Net's GroupNorm modules (mid_attn/norm too)


def parse_hlo(text: str) -> dict:
    """Instructions of a compiled HLO module text: name → dict(shape, op, rest, comp)."""
    comps, inst, cur, entry = {}, {}, None, None
    for line in text.split("\n"):
        if not line.startswith(" "):
            m = _COMP.match(line)
            if m:
                cur = m.group(2)
                comps[cur] = []
                if m.group(1):
                    entry = cur
                continue
            if line == "}":
                cur = None
            continue
        if cur is None:
            continue
        m = _INST.match(line)
        if m:
            name, shape, op, rest = m.groups()
            inst[name] = {"shape": shape, "op": op, "rest": rest, "comp": cur}
            comps[cur].append(name)
    return {"comps": comps, "inst": inst, "entry": entry}


def _dims(shape: str) -> list[int]:
    m = re.match(r"\(?\w+\[([\d,]*)\]", shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _short_shape(shape: str) -> str:
    if shape.startswith("("):
        return f"tuple of {shape.count('[')}"
    return re.sub(r"\{[^}]*\}", "", shape)


def _operands(inst: dict) -> list[str]:
    head = inst["rest"].split(")", 1)[0]
    return [o.strip().lstrip("%") for o in head.split(",") if o.strip().startswith("%")]


def _attr(inst: dict, key: str) -> str | None:
    m = re.search(key + r'=(\{[^}]*\}|"[^"]*"|[^,\s]+)', inst["rest"])
    return m.group(1).strip('{}"') if m else None


def _op_name(inst: dict) -> str:
    m = re.search(r'op_name="([^"]*)"', inst["rest"])
    return m.group(1) if m else ""


def _called(inst: dict) -> list[str]:
    names = []
    for key in ("calls", "branch_computations", "body", "condition", "to_apply"):
        value = _attr(inst, key)
        if value:
            names += [v.strip().lstrip("%") for v in value.split(",")]
    return names


def _conv_info(name: str, hlo: dict) -> dict:
    """Direction and layer of a convolution instruction (see the module docstring)."""
    inst = hlo["inst"][name]
    ops = _operands(inst)
    shapes = [_dims(hlo["inst"][o]["shape"]) if o in hlo["inst"] else [] for o in ops[:2]]
    lhs, rhs = shapes + [[]] * (2 - len(shapes))
    out = _dims(inst["shape"])
    labels = _attr(inst, "dim_labels") or "b01f_01io->b01f"
    lhs_l, rest = labels.split("_", 1)
    rhs_l, out_l = rest.split("->")
    window = _attr(inst, "window") or ""
    size = [int(s) for s in re.search(r"size=([\dx]+)", window).group(1).split("x")] \
        if "size=" in window else []
    stride = lambda key: int(re.search(key + r"=(\d+)", window).group(1)) \
        if key + "=" in window else 1
    spatial = lambda dims, lab: [dims[i] for i, c in enumerate(lab) if c.isdigit()] if dims else []
    out_sp = spatial(out, out_l)
    op_name = _op_name(inst)

    def feat(dims, lab, c):
        return dims[lab.index(c)] if dims and c in lab else None

    if size and out_sp and any(w > o for w, o in zip(size, out_sp, strict=False)):
        direction = "bwd_filter"  # activation as the window, kernel-sized output
        hw = spatial(lhs, lhs_l)
        cin, cout = feat(out, out_l, "b"), feat(out, out_l, "f")
        kernel, s = out_sp, stride("rhs_dilate")
    elif "transpose(" in op_name or "lhs_dilate" in window:
        direction = "bwd_input"
        hw = out_sp
        cin, cout = feat(out, out_l, "f"), feat(lhs, lhs_l, "f")
        kernel, s = size, stride("lhs_dilate")
    else:
        direction = "fwd"
        hw = spatial(lhs, lhs_l)
        cin, cout = feat(lhs, lhs_l, "f"), feat(out, out_l, "f")
        kernel, s = size, stride("stride")
    return {"direction": direction, "layer": layer_key(hw, cin, cout, kernel, s)}


def layer_key(hw, cin, cout, kernel, stride) -> str:
    hw = "×".join(str(d) for d in hw) if hw else "?"
    k = "×".join(str(d) for d in kernel) if kernel else "?"
    return f"{hw} {cin}→{cout} k{k}" + (f" /{stride}" if stride and stride > 1 else "")


def _inst_category(inst: dict) -> str | None:
    """Category of one (non-conv, non-dot) instruction from its metadata; None: no vote."""
    op = inst["op"]
    if op in _NO_VOTE:
        return None
    name = _op_name(inst)
    if not name:
        return "layout" if op in _DATA_MOVEMENT else None
    if _RNG.search(name):
        return "rng"
    if "UNet" in name:
        path = name.split("UNet)", 1)[-1]
        if re.search(_NORM_PATH, path + "/"):
            return "groupnorm"
        if "attn" in path:
            return "attention"
        if "temb" in path or "nin_shortcut/dot" in path:
            return "dense"
        if op in _DATA_MOVEMENT:
            return "layout"
        return "elementwise"
    if "jvp(" in name or "transpose(" in name:
        return "loss"
    return "optimizer"


def _dot_category(inst: dict) -> str:
    name = _op_name(inst)
    if not name:  # XLA-made (backward) dots: only attention multiplies batched matrices
        return "attention" if "lhs_batch_dims" in inst["rest"] else "dense"
    if "UNet" in name:
        path = name.split("UNet)", 1)[-1]
        if re.search(_NORM_PATH, path + "/"):  # e.g. group statistics computed as dots
            return "groupnorm"
        return "attention" if "attn" in path else "dense"
    return _inst_category(inst) or "other"


def classify(name: str, hlo: dict) -> dict:
    """{category, layer?, direction?} of a thunk's HLO instruction."""
    inst = hlo["inst"].get(name)
    if inst is None:
        return {"category": "other"}
    op = inst["op"]
    body = []
    if op == "fusion" or op == "custom-call":
        for comp in _called(inst):
            body += [hlo["inst"][n] | {"name": n} for n in hlo["comps"].get(comp, [])]
    if op == "convolution" or any(b["op"] == "convolution" for b in body):
        conv = name if op == "convolution" else next(b["name"] for b in body
                                                    if b["op"] == "convolution")
        info = _conv_info(conv, hlo)
        if info["layer"].endswith("k1×1"):
            return {"category": "dense", **info}
        return {"category": "conv_" + info["direction"], **info}
    if op == "dot":
        return {"category": _dot_category(inst)}
    dots = [b for b in body if b["op"] == "dot"]
    if dots:
        return {"category": _dot_category(dots[0])}
    if op in ("conditional", "while", "call"):
        return {"category": _inst_category(inst) or "optimizer"}
    votes = collections.Counter(c for c in (_inst_category(b) for b in (body or [inst])) if c)
    if not votes:
        return {"category": "layout" if op in _DATA_MOVEMENT else "other"}
    return {"category": votes.most_common(1)[0][0]}


def _jax_summarise(per_op: dict, hlo: dict, runs: int) -> dict:
    cats = dict.fromkeys(CATEGORY_KEYS, 0.0)
    layers = collections.defaultdict(lambda: collections.defaultdict(float))
    transposing = collections.defaultdict(float)  # ops that transpose (layout change) inside
    ops = []
    for name, ms in per_op.items():
        info = classify(name, hlo)
        cats[info["category"]] += ms
        if info["category"].startswith("conv_"):
            layers[info["layer"]][info["category"]] += ms
        inst = hlo["inst"].get(name, {})
        operands = [_short_shape(hlo["inst"][o]["shape"]) for o in _operands(inst)[:3]
                    if o in hlo["inst"]] if inst else []
        body = [hlo["inst"][n] for c in _called(inst) for n in hlo["comps"].get(c, [])] \
            if inst else []
        if any(b["op"] == "transpose" for b in body + ([inst] if inst else [])):
            transposing[info["category"]] += ms
        ops.append({"name": name, "ms": ms, "category": info["category"],
                    "layer": info.get("layer"), "hlo_op": inst.get("op"),
                    "shape": _short_shape(inst.get("shape", "")), "operands": operands,
                    "op_name": _op_name(inst).replace("jit(train_step)/", "") if inst else ""})
    ops.sort(key=lambda o: -o["ms"])
    return {"categories": cats, "conv_layers": {k: dict(v) for k, v in layers.items()},
            "top_ops": ops[:15], "top_ops_by_category": _top_by_category(ops),
            "transposing_ops_ms": dict(transposing),
            "same_input_fusions": _same_input_fusions(per_op, hlo), "num_ops": len(ops),
            "profiled_steps": runs}


def _same_input_fusions(per_op: dict, hlo: dict, min_operands: int = 4) -> dict:
    """Fusions of the entry computation that read exactly the same operands (≥ min_operands):
    XLA evaluating one chain once per consumer (e.g. once as is and once transposed for a
    backward-filter convolution). "beyond_largest" = a group's time minus its largest member."""
    groups = collections.defaultdict(list)
    for name in hlo["comps"].get(hlo["entry"], []):
        inst = hlo["inst"][name]
        operands = frozenset(_operands(inst))
        if inst["op"] == "fusion" and len(operands) >= min_operands:
            groups[operands].append(name)
    out = {"groups": 0, "fusions": 0, "ms": 0.0, "beyond_largest_ms": 0.0, "by_category": {}}
    by_cat = collections.defaultdict(float)
    for names in groups.values():
        if len(names) < 2:
            continue
        times = [per_op.get(n, 0.0) for n in names]
        out["groups"] += 1
        out["fusions"] += len(names)
        out["ms"] += sum(times)
        out["beyond_largest_ms"] += sum(times) - max(times)
        for n, t in zip(names, times, strict=True):
            by_cat[classify(n, hlo)["category"]] += t
    out["by_category"] = dict(by_cat)
    return out


# =========================================================================== torch side

_RNG_TORCH = ("randn", "randint", "rand", "normal", "uniform", "random", "bernoulli")
_LAYOUT_TORCH = ("cat", "copy_", "clone", "contiguous", "_to_copy", "upsample_nearest2d",
                 "upsample_nearest2d_backward", "constant_pad_nd")
_PY_RANGES = ("Optimizer.", "ProfilerStep", "mod:", "train_step")


def torch_worker(net: str, steps: int, warmup: int) -> dict:
    import importlib.util

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    spec = importlib.util.spec_from_file_location("peer_torch", BENCH / "peer_torch.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    dev = peer.device()
    peer._setup(dev)
    model, step = peer.make_train_step(net, dev=dev)
    host = peer._host_batches(net, BATCH, 8)
    calls = [0]

    def one():
        x0 = torch.from_numpy(host[calls[0] % len(host)]).to(dev)
        calls[0] += 1
        return step(x0)

    for _ in range(warmup + 1):
        loss = one()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = one()
        times.append(time.perf_counter() - start)

    modules = dict(model.named_modules())
    stack, handles = [], []

    def pre(mod, args):
        r = record_function("mod:" + mod._profile_name)
        r.__enter__()
        stack.append(r)

    def post(mod, args, out):
        stack.pop().__exit__(None, None, None)

    for name, mod in modules.items():
        if name:
            mod._profile_name = name
            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            with record_function("train_step"):
                loss = one()
        profiled_s = (time.perf_counter() - start) / steps
    for h in handles:
        h.remove()

    events = list(prof.events())
    result = _torch_summarise(events, modules, steps)
    split = _conv_backward_split(torch, result.pop("_conv_bwd"), steps)
    result["categories"]["conv_bwd_input"] += split["input_ms"]
    result["categories"]["conv_bwd_filter"] += split["filter_ms"]
    for layer, parts in split["layers"].items():
        result["conv_layers"].setdefault(layer, {}).update(parts)
    result["conv_backward_split"] = split["ratios"]
    result["conv_bwd_total_ms"] = result["categories"].pop("conv_bwd")
    wall_ms = statistics.median(times) * 1e3
    result.update({
        "side": "torch", "net": net, "params": int(peer.num_params(model)), "batch": BATCH,
        "steps": steps, "warmup": warmup, "wall_ms": wall_ms,
        "wall_ms_all": [t * 1e3 for t in times], "wall_profiled_ms": profiled_s * 1e3,
        "host_ms": profiled_s * 1e3 - result["busy_ms"],
        "wall_minus_busy_ms": wall_ms - result["busy_ms"],
        "loss_finite": bool(torch.isfinite(loss)), "versions": peer.versions(dev),
        "loadavg": _loadavg(),
    })
    return result


def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def _is_py_range(name: str) -> bool:
    return name.startswith(_PY_RANGES)


def _torch_summarise(events, modules, steps) -> dict:
    # Forward ops by autograd sequence number (the outermost op of each number) and the module
    # whose forward range holds them.
    def module_of(e):
        for a in _ancestors(e):
            if a.name.startswith("mod:"):
                return a.name[4:]
        return None

    def in_backward(e):
        return any(a.name.startswith("autograd::engine::evaluate_function") for a in _ancestors(e))

    def step_of(e):
        for a in _ancestors(e):
            if a.name == "train_step":
                return a
        return None

    forward_by_seq = {}
    last_backward_end = {}  # step range id → end of its last backward event
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            s = step_of(e)
            if s is not None:
                last_backward_end[s.id] = max(last_backward_end.get(s.id, 0),
                                              e.time_range.end)
        elif e.name.startswith("aten::") and e.sequence_nr >= 0 and not in_backward(e):
            forward_by_seq.setdefault(e.sequence_nr, []).append(e)
    # Ops that create no autograd node still record the current sequence number: the op that
    # made the node is the outermost (called from Python) and costliest of its number.
    forward_by_seq = {
        seq: max(evs, key=lambda e: (not any(a.name.startswith("aten::") for a in _ancestors(e)),
                                     e.cpu_time_total))
        for seq, evs in forward_by_seq.items()}

    def top_op(e):
        """The op called from Python (or the backward node) that holds e."""
        top = e
        for a in _ancestors(e):
            if a.name.startswith("autograd::engine::evaluate_function"):
                break
            if _is_py_range(a.name):
                break
            top = a
        return top

    def category(op_name, module, after_backward, shapes, backward):
        base = op_name.split("::")[-1]
        cls = type(modules[module]).__name__ if module in modules else ""
        if base in ("conv2d", "convolution", "_convolution", "mkldnn_convolution",
                    "convolution_backward", "ConvolutionBackward0"):
            weight = shapes[1] if len(shapes) > 1 else []
            if len(weight) == 4 and weight[2:] == [1, 1]:
                return "dense"
            return "conv_bwd" if backward else "conv_fwd"
        if "group_norm" in base or cls == "GroupNorm":
            return "groupnorm"
        if any(base.startswith(r) for r in _RNG_TORCH):
            return "rng"
        if module is None:
            if base in ("mse_loss", "mse_loss_backward", "MseLossBackward0"):
                return "loss"
            return "optimizer" if after_backward else "loss"
        if "attentions" in module:
            return "attention"
        if cls == "Linear" or base in ("addmm", "linear", "mm", "matmul"):
            return "dense"
        if base.strip("_") in {b.strip("_") for b in _LAYOUT_TORCH} or cls in ("Upsample2D",):
            return "layout"
        return "elementwise"

    cats = dict.fromkeys(CATEGORY_KEYS + ["conv_bwd"], 0.0)
    layers = collections.defaultdict(lambda: collections.defaultdict(float))
    conv_bwd = collections.defaultdict(lambda: {"us": 0.0, "calls": 0})
    per_op = collections.defaultdict(lambda: {"us": 0.0, "count": 0, "category": None})
    busy_us = 0.0
    for e in events:
        if _is_py_range(e.name):
            continue
        top = top_op(e)
        backward_node = None
        for a in _ancestors(e):
            if a.name.startswith("autograd::engine::evaluate_function"):
                backward_node = a
                break
        if e.name.startswith("autograd::engine::evaluate_function"):
            backward_node = e
        if backward_node is not None:
            node_name = backward_node.name.split(": ", 1)[-1]
            node = next((c for c in backward_node.cpu_children if c.name == node_name), None)
            fwd = forward_by_seq.get(node.sequence_nr) if node is not None else None
            # the aten::convolution_backward call of a ConvolutionBackward0 node
            cb = next((c for c in node.cpu_children if c.name == "aten::convolution_backward"),
                      None) if node is not None else None
            if "AccumulateGrad" in node_name:
                cat, module, fwd_top = "other", None, None
            else:
                fwd_top = fwd
                module = module_of(fwd) if fwd is not None else None
                shapes = fwd.input_shapes if fwd is not None else []
                if cb is not None:  # (input, weight) of the convolution itself
                    shapes = cb.input_shapes[1:3]
                cat = category(node_name, module, False, shapes, backward=True)
                if fwd is None and cb is None:
                    cat = "loss" if "MseLoss" in node_name else "other"
            # conv backward: its time per layer, split into input/filter gradient later
            if cat == "conv_bwd":
                if cb is not None:
                    key = _torch_conv_key(cb.input_shapes, cb.concrete_inputs, backward=True)
                    conv_bwd[key]["us"] += e.self_cpu_time_total
                    if e is cb:
                        conv_bwd[key]["calls"] += 1
            label_event = node if node is not None else backward_node
            label_shapes = fwd_top.input_shapes if fwd_top is not None else []
        else:
            module = module_of(top)
            s = step_of(e)
            after = s is not None and e.time_range.start >= last_backward_end.get(s.id, 1e30)
            cat = category(top.name, module, after, top.input_shapes, backward=False)
            if cat == "conv_fwd":
                conv = top if top.name in ("aten::conv2d", "aten::convolution") else None
                if conv is not None:
                    layers[_torch_conv_key(conv.input_shapes, conv.concrete_inputs)][
                        "conv_fwd"] += e.self_cpu_time_total / 1e3 / steps
            label_event, label_shapes = top, top.input_shapes
        cats[cat] += e.self_cpu_time_total / 1e3 / steps
        busy_us += e.self_cpu_time_total
        label = (label_event.name, json.dumps([s for s in (label_shapes or []) if s][:3]))
        per_op[label]["us"] += e.self_cpu_time_total
        per_op[label]["category"] = cat
        if e is label_event:
            per_op[label]["count"] += 1
    ops = sorted(({"name": n, "shapes": s, "ms": v["us"] / 1e3 / steps,
                   "calls_per_step": v["count"] / steps, "category": v["category"]}
                  for (n, s), v in per_op.items()), key=lambda o: -o["ms"])
    return {"categories": cats, "conv_layers": {k: dict(v) for k, v in layers.items()},
            "_conv_bwd": dict(conv_bwd), "busy_ms": busy_us / 1e3 / steps,
            "top_ops": ops[:15], "top_ops_by_category": _top_by_category(ops),
            "profiled_steps": steps}


def _top_by_category(ops: list[dict], n: int = 5) -> dict:
    out = collections.defaultdict(list)
    for o in ops:  # already sorted by time
        if len(out[o["category"]]) < n:
            out[o["category"]].append(o)
    return dict(out)


def _torch_conv_key(shapes, concrete, backward: bool = False) -> str:
    """Layer key from aten::conv2d/convolution (input, weight, ..., stride at 3) or
    aten::convolution_backward (grad_out, input, weight, bias_sizes, stride at 4, ...)."""
    x, w = (shapes[1], shapes[2]) if backward else (shapes[0], shapes[1])
    stride = (concrete[4] if backward else concrete[3]) if concrete else None
    s = stride[0] if isinstance(stride, list | tuple) and stride else 1
    return layer_key(x[2:], x[1], w[0], w[2:], s) + (
        "|" + json.dumps([list(shapes[0]), list(x), list(w), concrete[4:7], concrete[10]])
        if backward else "")


def _time_conv_backward(torch, call: tuple, mask: list, reps: int) -> float:
    """Median seconds of ``reps`` aten::convolution_backward calls (after one warm-up)."""
    times = []
    for i in range(reps + 1):
        start = time.perf_counter()
        torch.ops.aten.convolution_backward(*call, mask)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_backward_split(torch, conv_bwd: dict, steps: int, reps: int = 3) -> dict:
    """Splits each layer's profiled convolution_backward time into input and filter gradient
    by the ratio of the two computed apart (median of ``reps`` calls each, after one warm-up)."""
    out = {"input_ms": 0.0, "filter_ms": 0.0, "layers": {}, "ratios": {}}
    layers = collections.defaultdict(lambda: collections.defaultdict(float))
    for key, v in conv_bwd.items():
        layer, spec = key.split("|", 1)
        grad_shape, x_shape, w_shape, (stride, padding, dilation), mask = (
            *json.loads(spec)[:3], json.loads(spec)[3], json.loads(spec)[4])
        ms = v["us"] / 1e3 / steps
        tensors = [torch.randn(s) for s in (grad_shape, x_shape, w_shape)]
        call = (*tensors, [w_shape[0]], stride, padding, dilation, False, [0, 0], 1)
        t_in = _time_conv_backward(torch, call, [True, False, False], reps) if mask[0] else 0.0
        t_w = _time_conv_backward(torch, call, [False, True, True], reps) \
            if (mask[1] or mask[2]) else 0.0
        frac = t_in / (t_in + t_w) if t_in + t_w > 0 else 0.0
        if frac > 0:
            layers[layer]["conv_bwd_input"] += ms * frac
        layers[layer]["conv_bwd_filter"] += ms * (1 - frac)
        out["input_ms"] += ms * frac
        out["filter_ms"] += ms * (1 - frac)
        out["ratios"][layer] = {"input_fraction": frac, "alone_input_ms": t_in * 1e3,
                                "alone_filter_ms": t_w * 1e3}
    out["layers"] = {k: dict(v) for k, v in layers.items()}
    return out


# =========================================================================== report


def _pct(part, whole):
    return f"{100 * part / whole:.1f}" if whole else "–"


def _ratio(a, b):
    if a is None or b is None or b <= 0.005:
        return "–"
    return f"{a / b:.2f}×"


def _ms(v):
    return "–" if v is None else f"{v:.2f}"


def render(net: str, jx: dict | None, th: dict | None, date: str, command: str,
           library: str = "") -> str:
    sides = [s for s in (jx, th) if s]
    lines = [f"# Profile of one train step: {net}", "",
             f"{date}; `{command}`" + (f" ({library})" if library else "") + f"; batch {BATCH}, "
             + ", ".join(f"{s['side']} {s['params']:,} params" for s in sides) + ".", ""]
    for s in sides:
        load = s.get("loadavg")
        gaps = s.get("gaps_inside_executable_ms")
        lines.append(f"- {s['side']}: {s['wall_ms']:.1f} ms/step without the profiler (median of "
                     f"{s['steps']}), {s['wall_profiled_ms']:.1f} ms/step profiled, "
                     f"busy {s['busy_ms']:.1f} ms/step (wall without the profiler − busy: "
                     f"{s['wall_minus_busy_ms']:.1f})"
                     + (f"; of the host time, {gaps:.1f} ms/step are gaps with no thunk running "
                        f"between the first and the last thunk of a step" if gaps is not None else "")
                     + (f"; load average {load[0]:.2f} at its end" if load else "") + ".")
    lines += ["", "| category | JAX ms/step | JAX % | torch ms/step | torch % | JAX ÷ torch |",
              "|---|---|---|---|---|---|"]

    def cell(s, k):
        if not s:
            return None
        return s["host_ms"] if k == "host" else s["categories"].get(k, 0.0)

    totals = {id(s): s["busy_ms"] + s["host_ms"] for s in sides}
    for k in CATEGORY_KEYS + ["host"]:
        a, b = cell(jx, k), cell(th, k)
        if (a or 0) < 0.005 and (b or 0) < 0.005 and k != "host":
            continue
        lines.append(f"| {LABELS[k]} | {_ms(a)} | {_pct(a, totals[id(jx)]) if jx else '–'} | "
                     f"{_ms(b)} | {_pct(b, totals[id(th)]) if th else '–'} | {_ratio(a, b)} |")
    groups = [("all 3×3 convolutions", ["conv_fwd", "conv_bwd_input", "conv_bwd_filter"]),
              ("GroupNorm + elementwise + layout", ["groupnorm", "elementwise", "layout"])]
    for label, keys in groups:
        a = sum(cell(jx, k) for k in keys) if jx else None
        b = sum(cell(th, k) for k in keys) if th else None
        lines.append(f"| *subtotal: {label}* | {_ms(a)} | "
                     f"{_pct(a, totals[id(jx)]) if jx else '–'} | {_ms(b)} | "
                     f"{_pct(b, totals[id(th)]) if th else '–'} | {_ratio(a, b)} |")
    a = totals[id(jx)] if jx else None
    b = totals[id(th)] if th else None
    lines.append(f"| **step, profiled (sum of the rows)** | **{_ms(a)}** | 100 | **{_ms(b)}** | 100 | "
                 f"**{_ratio(a, b)}** |")
    a = jx["wall_ms"] if jx else None
    b = th["wall_ms"] if th else None
    lines.append(f"| step without the profiler (median wall) | {_ms(a)} | | {_ms(b)} | | "
                 f"{_ratio(a, b)} |")

    if jx and jx.get("transposing_ops_ms"):
        tr = jx["transposing_ops_ms"]
        parts = ", ".join(f"{LABELS[k].split(' (')[0]} {v:.1f}" for k, v in
                          sorted(tr.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines += ["", f"XLA ops that transpose inside (a layout change, alone or fused with "
                  f"other work): {sum(tr.values()):.1f} ms/step in all ({parts})."]
    if jx and jx.get("same_input_fusions", {}).get("groups"):
        d = jx["same_input_fusions"]
        parts = ", ".join(f"{LABELS[k].split(' (')[0]} {v:.1f}" for k, v in
                          sorted(d["by_category"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines += ["", f"XLA fusions that read exactly the same operands as another fusion (one "
                  f"chain evaluated once per consumer): {d['fusions']} fusions in {d['groups']} "
                  f"groups, {d['ms']:.1f} ms/step ({parts}); {d['beyond_largest_ms']:.1f} ms/step "
                  f"beyond the largest fusion of each group."]
    layer_keys = sorted({k for s in sides for k in s["conv_layers"]},
                        key=lambda k: (-int(k.split("×")[0]) if k[0].isdigit() else 0, k))
    if layer_keys:
        lines += ["", "Convolutions by layer (input H×W, Cin→Cout, kernel, stride), ms/step "
                  "(torch's backward split by the measured input/filter ratio):", "",
                  "| layer | JAX fwd | torch fwd | JAX bwd-in | torch bwd-in | JAX bwd-filter "
                  "| torch bwd-filter | JAX ÷ torch (all three) |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in layer_keys:
            vals = []
            for part in ("conv_fwd", "conv_bwd_input", "conv_bwd_filter"):
                for s in (jx, th):
                    vals.append(s["conv_layers"].get(k, {}).get(part) if s else None)
            a = sum(v or 0 for v in vals[0::2]) if jx else None
            b = sum(v or 0 for v in vals[1::2]) if th else None
            lines.append(f"| {k} | " + " | ".join(_ms(v) for v in vals) + f" | {_ratio(a, b)} |")
    if jx:
        lines += ["", "Top 15 XLA ops (ms/step, time split among concurrent thunks):", "",
                  "| op | ms | category | HLO | shape ← operands | op_name |", "|---|---|---|---|---|---|"]
        for o in jx["top_ops"]:
            shape = o["shape"] + (" ← " + ", ".join(o["operands"]) if o["operands"] else "")
            lines.append(f"| {o['name']} | {o['ms']:.2f} | {o['category']} | {o['hlo_op']} | "
                         f"{shape} | {o['op_name'][:70]} |")
    if th:
        lines += ["", "Top 15 torch ops (self CPU ms/step, backward nodes with their aten ops):",
                  "", "| op | ms | calls/step | category | input shapes |", "|---|---|---|---|---|"]
        for o in th["top_ops"]:
            lines.append(f"| {o['name']} | {o['ms']:.2f} | {o['calls_per_step']:.0f} | "
                         f"{o['category']} | {o['shapes']} |")
    return "\n".join(lines) + "\n"


# =========================================================================== driver


def _git_state() -> dict:
    """HEAD and the modified files of the library (what the JAX side compiles)."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "diffusion_jax", "experiments", "bench/peer_torch.py")
    files = [*(ROOT / "diffusion_jax").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    return {"root": str(ROOT), "head": git("rev-parse", "HEAD").strip(),
            "dirty": [line[3:] for line in dirty.splitlines() if line.strip()],
            "library_mtime": max((f.stat().st_mtime for f in files), default=0.0)}


def _run_worker(side: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--net", args.net,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.keep:
        cmd += ["--keep", args.keep]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["worker_s"] = time.perf_counter() - start
            return result
    raise RuntimeError(f"{side} worker failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--net", choices=("digits", "benchmark"), required=True)
    p.add_argument("--side", choices=("jax", "torch", "both"), default="both")
    p.add_argument("--steps", type=int, default=None,
                   help="steps timed and steps profiled (default 20 digits, 5 benchmark)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(BENCH / "profile"))
    p.add_argument("--keep", default=None, help="keep the XLA trace and HLO text in this folder")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--label", default="",
                   help="what was profiled, for the header (default: the commit, from git)")
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.net == "digits" else 5

    if args.worker == "jax":
        print(RESULT_TAG + json.dumps(jax_worker(args.net, args.steps, args.warmup, args.keep)))
        return 0
    if args.worker == "torch":
        print(RESULT_TAG + json.dumps(torch_worker(args.net, args.steps, args.warmup)))
        return 0

    sides = ("jax", "torch") if args.side == "both" else (args.side,)
    git_before = _git_state()
    results = {side: _run_worker(side, args) for side in sides}
    git_after = _git_state()
    date = datetime.date.today().isoformat()
    command = f"python bench/profile_step.py --net {args.net}" + (
        f" --side {args.side}" if args.side != "both" else "")
    library = args.label or (f"commit {git_before['head'][:10]}" if git_before["head"]
                             else f"the library at {ROOT}")
    md = render(args.net, results.get("jax"), results.get("torch"), date, command, library)
    if git_before["dirty"] or git_after != git_before:
        md += (f"\n**The library differed from commit {git_before['head'][:10]} during this run** "
               f"(modified: {', '.join(git_before['dirty'] + git_after['dirty']) or 'changed'}); "
               f"these numbers are not those of a commit.\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.side == "both" else f"_{args.side}"
    (out / f"{args.net}{suffix}.md").write_text(md)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    (out / f"{args.net}{suffix}.json").write_text(json.dumps(
        {"net": args.net, "date": date, "command": command, "loadavg_end": load,
         "git_before": git_before, "git_after": git_after,
         "cpu_count": os.cpu_count(), **results}, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
