"""The measurements of ``benchmarks/run.py``: each case returns rows (dicts) for the report.

Every time is the **best** (minimum) of ``repeats`` calls after one warm-up call (tracing, XLA
compilation, allocation), each call forced to finish (``.numpy()``); the median is kept too
(``median_seconds``).  The minimum is the estimate least disturbed by other work on the machine.
Peers and configurations compared with each other are measured in the same process and
**interleaved** (one call of each in turn, ``repeats`` rounds), so that a change of load during
the run touches all of them alike; their ratios are what compare, absolute times depend on the
machine and its load (the report records the load average).

Training steps and inference run in worker processes (:func:`worker`), one per model (and one
per process-wide setting: threads, oneDNN), which also give their peak resident memory.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time

import numpy as np

#: the quick preset size of U-ReSNet (IXI at 2 mm) and its LCC window (9 mm at 2 mm)
URESNET_QUICK_SHAPE = (80, 104, 88)
URESNET_QUICK_LCC_WINDOW = 5
#: U-ReSNet's paper size (OASIS at 1 mm) and the pyramid's (Learn2Reg, §3)
URESNET_PAPER_SHAPE = (160, 176, 208)
PYRAMID_SHAPE = (64, 64, 64)
#: the pyramid's quick preset size
PYRAMID_QUICK_SHAPE = (32, 32, 32)
#: Gunnarsson et al. 2020, Table 1: seconds per pair, prediction only
PYRAMID_PAPER_SECONDS = {"CPU": 4.83, "GPU": 0.31}


def interleaved(fns: dict, repeats: int, warm: bool = True) -> dict:
    """``{name: {"seconds": best, "median_seconds": median[, "first_call_seconds": warm-up]}}``.

    Each ``fns[name]()`` is called once (warm-up, timed as the first call; ``warm=False`` when
    the caller has already called them), then ``repeats`` rounds call every function once in
    turn.
    """
    out = {name: {} for name in fns}
    for name, fn in fns.items() if warm else ():
        t0 = time.perf_counter()
        fn()
        out[name] = {"first_call_seconds": time.perf_counter() - t0}
    times = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out[name].update(seconds=float(min(ts)), median_seconds=float(np.median(ts)))
    return out


def peak_rss_mb():
    """Peak resident memory of this process, MiB: Linux ``VmHWM`` (since the last
    :func:`reset_peak_rss`), else ``getrusage`` (which on Linux a child inherits from its
    parent across fork and exec, so it is only used where ``/proc`` is missing)."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2 ** 20


def rss_mb():
    """Current resident memory of this process, MiB (Linux ``VmRSS``; None elsewhere)."""
    return _proc_status_mib("VmRSS")


def _proc_status_mib(key):
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB; None without it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak (``VmHWM``) to the current resident memory (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _numpy(x):
    return [np.asarray(t) for t in x] if isinstance(x, (list, tuple)) else np.asarray(x)


# ------------------------------------------------------------------------------------ the warp

def _warp_inputs(size, batch, seed=0):
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    image = rng.normal(size=(batch, *shape, 1)).astype("float32")
    identity = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape],
                                    indexing="ij"), axis=-1)
    grid = (identity + rng.normal(scale=2.0, size=(batch, *shape, 3))).astype("float32")
    upstream = rng.normal(size=(batch, *shape, 1)).astype("float32")
    return image, grid, upstream


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


#: the warp section's variant names of the suite's default and of the warp before issue 11
WARP_DEFAULT = "regseg default (fused, XLA)"
WARP_BEFORE = "regseg reference, no XLA (before issue 11)"


def warp_rows(sizes, batches, repeats):
    """The dense 3-D linear warp (border padding): regseg's samplers against PyTorch's
    ``grid_sample`` (align_corners=True, padding_mode="border") and scipy's
    ``map_coordinates`` (order=1, mode="nearest"; forward only), forward and forward+backward.
    """
    import tensorflow as tf
    from scipy import ndimage

    from regseg.layers import warp

    variants = {
        WARP_DEFAULT: dict(implementation="auto", jit_compile="auto"),
        WARP_BEFORE: dict(implementation="reference", jit_compile=False),
        "regseg reference, XLA": dict(implementation="reference", jit_compile=True),
        "regseg fused, no XLA": dict(implementation="fused", jit_compile=False),
    }
    torch = _torch()
    rows = []
    for size in sizes:
        for batch in batches:
            image, grid, upstream = _warp_inputs(size, batch)
            case = f"{size}^3, batch {batch}"
            coords = [np.moveaxis(grid[b], -1, 0) for b in range(batch)]
            reference = np.stack([ndimage.map_coordinates(image[b, ..., 0], coords[b], order=1,
                                                          mode="nearest")
                                  for b in range(batch)])[..., None]
            ti, tg, tu = (tf.constant(a) for a in (image, grid, upstream))
            fns, diffs = {}, {}
            for name, kw in variants.items():
                fwd = tf.function(lambda a, g, kw=kw: warp(a, g, **kw))

                def fb(a, g, kw=kw):
                    with tf.GradientTape() as tape:
                        tape.watch([a, g])
                        loss = tf.reduce_sum(warp(a, g, **kw) * tu)
                    return tape.gradient(loss, [a, g])

                fb = tf.function(fb)
                diffs[name] = float(np.abs(np.asarray(fwd(ti, tg)) - reference).max())
                fns[(name, "forward")] = lambda fwd=fwd: _numpy(fwd(ti, tg))
                fns[(name, "forward+backward")] = lambda fb=fb: _numpy(fb(ti, tg))
            if torch is not None:
                name, fwd, fb, diffs[name] = _torch_warp(torch, image, grid, upstream, reference)
                fns[(name, "forward")], fns[(name, "forward+backward")] = fwd, fb
            name = "scipy map_coordinates"
            diffs[name] = 0.0
            fns[(name, "forward")] = lambda: [
                ndimage.map_coordinates(image[b, ..., 0], coords[b], order=1, mode="nearest")
                for b in range(batch)]
            for (name, measure), timing in interleaved(fns, repeats).items():
                row = dict(section="warp", case=case, variant=name, measure=measure, **timing)
                if measure == "forward":
                    row["max_abs_diff_vs_scipy"] = diffs[name]
                rows.append(row)
    return rows


def _torch_warp(torch, image, grid, upstream, reference):
    """``(name, forward, forward+backward, max |diff| vs scipy)`` of PyTorch's ``grid_sample``."""
    size = image.shape[1:4]
    img = torch.tensor(np.moveaxis(image, -1, 1).copy(), requires_grad=True)  # (B, C, D, H, W)
    # grid_sample's grid: (B, D, H, W, 3) with (x, y, z) = (W, H, D) axes, normalised to [-1, 1]
    scale = np.array([2.0 / (s - 1) for s in size], np.float32)
    norm = (grid * scale - 1.0)[..., ::-1].copy()
    grd = torch.tensor(norm, requires_grad=True)
    up = torch.tensor(np.moveaxis(upstream, -1, 1).copy())
    sample = torch.nn.functional.grid_sample

    def fwd():
        with torch.no_grad():
            return sample(img, grd, mode="bilinear", padding_mode="border", align_corners=True)

    def fb():
        img.grad = grd.grad = None
        out = sample(img, grd, mode="bilinear", padding_mode="border", align_corners=True)
        (out * up).sum().backward()
        return img.grad, grd.grad

    diff = float(np.abs(np.moveaxis(fwd().numpy(), 1, -1) - reference).max())
    return f"torch grid_sample ({torch.get_num_threads()} threads)", fwd, fb, diff


# ------------------------------------------------------------------------------ cost volume

def plain_cost_volume(fixed, moving, d):
    """The plain reference: per shift, pad + slice + channel mean, in plain TensorFlow."""
    import tensorflow as tf
    spatial = fixed.shape[1:4]
    padded = tf.pad(moving, [[0, 0], [d, d], [d, d], [d, d], [0, 0]])
    out = []
    for a in range(2 * d + 1):
        for b in range(2 * d + 1):
            for c in range(2 * d + 1):
                shifted = padded[:, a:a + spatial[0], b:b + spatial[1], c:c + spatial[2], :]
                out.append(tf.reduce_mean(fixed * shifted, axis=-1))
    return tf.stack(out, axis=-1)


#: the pyramid's cost volume inputs at 64^3 (PyramidConfig defaults): level -> (size, channels);
#: level 0 correlates the images themselves
PYRAMID_CV_LEVELS = {0: (64, 1), 1: (32, 16), 2: (16, 32), 3: (8, 32), 4: (4, 32)}


def cost_volume_rows(levels, repeats, d=2):
    """The partial cost volume (d = 2, 125 channels) at the pyramid's feature sizes: regseg's
    layer function (uncompiled, its default with a compiled backward pass, and compiled whole)
    against the plain per-shift reference."""
    import tensorflow as tf

    from regseg.layers import cost_volume

    rng = np.random.default_rng(1)
    rows = []
    for level in levels:
        size, channels = PYRAMID_CV_LEVELS[level]
        fixed = tf.constant(rng.normal(size=(1, size, size, size, channels)).astype("float32"))
        moving = tf.constant(rng.normal(size=(1, size, size, size, channels)).astype("float32"))
        upstream = tf.constant(rng.normal(size=(1, size, size, size, (2 * d + 1) ** 3))
                               .astype("float32"))
        case = f"level {level}: {size}^3 x {channels}"
        expected = np.asarray(plain_cost_volume(fixed, moving, d))
        fns, diffs = {}, {}
        variants = (
            ("plain per-shift reference", plain_cost_volume, False),
            ("regseg cost_volume, no XLA", functools.partial(cost_volume, jit_compile=False),
             False),
            ("regseg default (XLA backward pass)", cost_volume, False),
            ("regseg cost_volume, whole function under XLA",
             functools.partial(cost_volume, jit_compile=False), True))
        for name, fn, jit in variants:
            fwd = tf.function(lambda a, b, fn=fn: fn(a, b, d), jit_compile=jit)

            def fb(a, b, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch([a, b])
                    loss = tf.reduce_sum(fn(a, b, d) * upstream)
                return tape.gradient(loss, [a, b])

            fb = tf.function(fb, jit_compile=jit)
            diffs[name] = float(np.abs(np.asarray(fwd(fixed, moving)) - expected).max())
            fns[(name, "forward")] = lambda fwd=fwd: _numpy(fwd(fixed, moving))
            fns[(name, "forward+backward")] = lambda fb=fb: _numpy(fb(fixed, moving))
        for (name, measure), timing in interleaved(fns, repeats).items():
            row = dict(section="cost_volume", case=case, variant=name, measure=measure, **timing)
            if measure == "forward":
                row["max_abs_diff"] = diffs[name]
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ HD95

def hd95_rows(shape, repeats):
    """``evaluation.metrics.hd95`` against the pooled full-volume HD95 it replaced (the former
    ``benchmarks/bench_hd95.py``)."""
    from scipy import ndimage

    from regseg.evaluation.metrics import hausdorff_distance, hd95

    def blob(centre, radius, seed):
        rng = np.random.default_rng(seed)
        grid = np.indices(shape, dtype=np.float32)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 4) * 30
        return dist + noise < radius

    centre = [s / 2 for s in shape]
    rows = []
    for name, radius in (("small structure", 12), ("large structure", 45)):
        a = blob(centre, radius, 0)
        b = blob([c + 2 for c in centre], radius, 1)
        case = f"{name}, {'x'.join(map(str, shape))}"
        variants = {"regseg hd95": lambda: hd95(a, b, spacing=1.0),
                    "pooled full-volume (former)":
                        lambda: hausdorff_distance(a, b, spacing=1.0, percentile=95)}
        timings = interleaved(variants, repeats)
        for variant, fn in variants.items():
            rows.append(dict(section="hd95", case=case, variant=variant, measure="seconds",
                             value=float(fn()), **timings[variant]))
    return rows


# ------------------------------------------------------------------------- worker processes
#
# One worker process per model (and per process-wide setting): it builds the model once per
# configuration below (Keras layers take their dtype policy when built, the warp layers carry
# their own XLA choice), then times the configurations interleaved.

#: configurations measured side by side in one process ("XLA on the layers": the warp and the
#: cost volume compiled on their own, :mod:`regseg.layers._xla`; ``warp_jit`` is their
#: ``jit_compile``)
CONFIGS = {
    "baseline": dict(precision="float32", warp_jit=False, step_jit=False,
                     label="float32, no XLA (baseline)"),
    "warp_xla": dict(precision="float32", warp_jit="auto", step_jit=False,
                     label="float32, XLA on the layers only (suite default)"),
    "step_xla": dict(precision="float32", warp_jit="auto", step_jit=True,
                     label="float32, whole step under XLA (jit_compile=True)"),
    "bf16": dict(precision="mixed_bfloat16", warp_jit=False, step_jit=False,
                 label="mixed_bfloat16, no XLA"),
    "bf16_warp_xla": dict(precision="mixed_bfloat16", warp_jit="auto", step_jit=False,
                          label="mixed_bfloat16, XLA on the layers only"),
}

#: process-wide settings, each in its own worker (compared with the main worker's baseline)
PROCESS_SETTINGS = {
    "default": {},
    "inter_op_1": dict(inter_op_threads=1, label="inter-op threads 1"),
    "intra_op_1": dict(intra_op_threads=1, label="intra-op threads 1"),
    "onednn_off": dict(onednn=False, label="oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)"),
}


def worker(job: dict) -> list:
    """Run one job in this (fresh) process; return its rows.

    ``job``: ``{"kind": "step" | "inference", "model": "ureSnet" | "registration_only" |
    "pyramid", "configs": [names of CONFIGS], "setting": name of PROCESS_SETTINGS,
    "repeats": int, "shape": optional [X, Y, Z]}``.
    """
    setting = PROCESS_SETTINGS[job.get("setting", "default")]
    if setting.get("onednn") is False:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import tensorflow as tf
    if setting.get("inter_op_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(int(setting["inter_op_threads"]))
    if setting.get("intra_op_threads"):
        tf.config.threading.set_intra_op_parallelism_threads(int(setting["intra_op_threads"]))
    rows = {"step": _step_rows, "inference": _inference_rows,
            "runner": _runner_rows}[job["kind"]](job)
    prefix = f"{setting['label']}: " if setting.get("label") else ""
    for row in rows:
        row.update(variant=prefix + row["variant"], setting=job.get("setting", "default"))
    return rows


def _build(model_name, shape, config, strategy=None):
    """Build (and for training, compile) one model under ``config``; returns the models."""
    import contextlib

    import keras

    from regseg.layers import CostVolume, SpatialTransformer

    keras.mixed_precision.set_global_policy(config["precision"])
    keras.utils.set_random_seed(0)
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            if model_name == "pyramid":
                from regseg.reproductions.pyramid.model import (PyramidConfig, build_pyramid,
                                                                compile_losses)
                cfg = PyramidConfig(input_shape=shape)
                models = build_pyramid(cfg)
                loss, weights = compile_losses(cfg)
                models[0].compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss,
                                  loss_weights=weights, jit_compile=bool(config["step_jit"]))
            else:
                from regseg.reproductions.ureSnet.model import (UReSNetConfig, build_ureSnet,
                                                                 losses_and_weights)
                cfg = UReSNetConfig(input_shape=shape, segmentation=model_name == "ureSnet",
                                    lcc_window=URESNET_QUICK_LCC_WINDOW)
                models = build_ureSnet(cfg)
                loss, weights = losses_and_weights(cfg)
                models[0].compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss,
                                  loss_weights=weights, jit_compile=bool(config["step_jit"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for model in models:
        for layer in model._flatten_layers():
            if isinstance(layer, (SpatialTransformer, CostVolume)):
                layer.jit_compile = config["warp_jit"]
    return models


def _ureSnet_batch(shape, segmentation, seed=0):
    rng = np.random.default_rng(seed)
    x = {"moving": rng.random((1, *shape, 1), dtype=np.float32),
         "reference": rng.random((1, *shape, 1), dtype=np.float32)}
    y = {"deformed": x["reference"]}
    if segmentation:
        eye = np.eye(4, dtype=np.float32)
        y.update(moving_seg=eye[rng.integers(0, 4, (1, *shape))],
                 warped_seg=eye[rng.integers(0, 4, (1, *shape))])
    return x, y


def _pyramid_batch(shape, seed=0):
    from regseg.reproductions.pyramid.model import PyramidConfig, compile_losses
    rng = np.random.default_rng(seed)
    eye = np.eye(PyramidConfig().n_labels + 1, dtype=np.float32)
    x = {"moving": rng.random((1, *shape, 1), dtype=np.float32),
         "fixed": rng.random((1, *shape, 1), dtype=np.float32),
         "moving_seg": eye[rng.integers(0, len(eye), (1, *shape))],
         "fixed_seg": eye[rng.integers(0, len(eye), (1, *shape))]}
    # the training model's outputs are the per-sample loss terms: the targets are unused
    y = {k: np.zeros((1,), np.float32) for k in compile_losses(PyramidConfig())[0]}
    return x, y


def _step_rows(job):
    import tensorflow as tf

    from regseg.layers import ReconstructionLoss, warp
    from regseg.training.distribute import make_strategy

    repeats = int(job["repeats"])
    model_name = job["model"]
    pyramid = model_name == "pyramid"
    shape = tuple(job.get("shape") or (PYRAMID_QUICK_SHAPE if pyramid else URESNET_QUICK_SHAPE))
    segmentation = model_name == "ureSnet"
    x, y = _pyramid_batch(shape) if pyramid else _ureSnet_batch(shape, segmentation)
    xt = {k: tf.constant(v) for k, v in x.items()}
    strategy = make_strategy()  # as the runner: MirroredStrategy over the CPU
    rng = np.random.default_rng(5)
    identity = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape],
                                    indexing="ij"), -1)
    grid = tf.constant((identity + rng.normal(scale=1.5, size=(1, *shape, 3))).astype("float32"))
    images = {c: tf.constant(rng.random((1, *shape, c), dtype=np.float32))
              for c in ((1, 4) if segmentation else (1,))}
    recon = ReconstructionLoss(window=URESNET_QUICK_LCC_WINDOW)
    ref_t = tf.constant(x["fixed" if pyramid else "reference"])
    mov_t = tf.constant(x["moving"])

    steps, parts, memory = {}, {}, {}
    for name in job["configs"]:
        config = CONFIGS[name]
        train, _ = _build(model_name, shape, config, strategy)
        jit = bool(config["step_jit"])
        steps[name] = lambda train=train: train.train_on_batch(x, y)
        t0 = time.perf_counter()
        steps[name]()  # tracing and compilation, before the memory is measured
        first = time.perf_counter() - t0
        steps[name]()  # a second warm-up call: Keras' step may trace again (optimiser state)
        before = rss_mb()
        reset = reset_peak_rss()
        steps[name]()
        memory[name] = dict(peak_rss_mb=peak_rss_mb() if reset else None,
                            rss_before_mb=before, first_call_seconds=first)

        def forward(inputs, train=train):
            return strategy.run(lambda i: train(i, training=True), args=(inputs,))

        def forward_backward(inputs, train=train):
            def replica(i):
                with tf.GradientTape() as tape:
                    out = train(i, training=True)
                    total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32))
                                      for o in tf.nest.flatten(out)])
                return tape.gradient(total, train.trainable_variables)
            return strategy.run(replica, args=(inputs,))

        fwd = tf.function(forward, jit_compile=jit)
        fb = tf.function(forward_backward, jit_compile=jit)
        parts[(name, "forward")] = lambda f=fwd: tf.nest.map_structure(np.asarray, f(xt))
        parts[(name, "forward+backward (loss excluded)")] = \
            lambda f=fb: tf.nest.map_structure(np.asarray, f(xt))
        if pyramid:  # its losses are outputs of the model: no separate warp / loss parts
            continue

        def warp_fb(a, g, warp_jit=config["warp_jit"]):
            with tf.GradientTape() as tape:
                tape.watch([a, g])
                total = tf.reduce_sum(warp(a, g, jit_compile=warp_jit) ** 2)
            return tape.gradient(total, [a, g])

        def loss_fb(a, b):
            with tf.GradientTape() as tape:
                tape.watch(b)
                total = tf.reduce_sum(recon.call(a, b))
            return tape.gradient(total, b)

        wfb = tf.function(warp_fb, jit_compile=jit)
        lfb = tf.function(loss_fb, jit_compile=jit)
        for c, image in images.items():
            label = f"warp forward+backward ({c} channel{'s' if c > 1 else ''})"
            parts[(name, label)] = lambda f=wfb, image=image: _numpy(f(image, grid))
        parts[(name, f"MSE + LCC loss forward+backward (window {URESNET_QUICK_LCC_WINDOW})")] = \
            lambda f=lfb: np.asarray(f(ref_t, mov_t))

    case = f"{model_name} {'x'.join(map(str, shape))}, batch 1"
    rows = []
    for name, timing in interleaved(steps, repeats, warm=False).items():
        timing["first_call_seconds"] = memory[name].pop("first_call_seconds")
        rows.append(dict(section="step", case=case, config=name, variant=CONFIGS[name]["label"],
                         measure="training step (train_on_batch)", **timing, **memory[name]))
    for (name, measure), timing in interleaved(parts, repeats).items():
        rows.append(dict(section="step", case=case, config=name, variant=CONFIGS[name]["label"],
                         measure=measure, **timing))
    return rows


def _inference_rows(job):
    import tensorflow as tf

    repeats = int(job["repeats"])
    model_name = job["model"]
    default = URESNET_PAPER_SHAPE if model_name == "ureSnet" else PYRAMID_SHAPE
    shape = tuple(job.get("shape") or default)
    names = ("moving", "reference") if model_name == "ureSnet" else ("moving", "fixed")
    rng = np.random.default_rng(0)
    inputs = {n: tf.constant(rng.random((1, *shape, 1), dtype=np.float32)) for n in names}
    fns, memory, parameters = {}, {}, None
    for name in job["configs"]:
        _, model = _build(model_name, shape, CONFIGS[name])
        parameters = int(model.count_params())
        predict = tf.function(lambda i, model=model: model(i, training=False))
        fns[name] = lambda p=predict: tf.nest.map_structure(np.asarray, p(inputs))
        t0 = time.perf_counter()
        fns[name]()  # tracing and compilation
        first = time.perf_counter() - t0
        before = rss_mb()
        reset = reset_peak_rss()
        fns[name]()
        memory[name] = dict(peak_rss_mb=peak_rss_mb() if reset else None, rss_before_mb=before,
                            first_call_seconds=first)
    rows = []
    for name, timing in interleaved(fns, repeats, warm=False).items():
        timing["first_call_seconds"] = memory[name].pop("first_call_seconds")
        row = dict(section="inference", case=f"{model_name} {'x'.join(map(str, shape))}, batch 1",
                   config=name, variant=CONFIGS[name]["label"], measure="prediction per pair",
                   parameters=parameters, **timing, **memory[name])
        if model_name == "pyramid" and shape == PYRAMID_SHAPE:
            row["paper_cpu_seconds"] = PYRAMID_PAPER_SECONDS["CPU"]
            row["paper_gpu_seconds"] = PYRAMID_PAPER_SECONDS["GPU"]
        rows.append(row)
    return rows


# ------------------------------------------------------- every reproduction, through its runner

def runner_settings(config: str) -> tuple[str, str]:
    """A :data:`CONFIGS` entry as ``training.performance.configure``'s ``(precision,
    jit_compile)``, the switch the runner itself uses (``--precision``, ``--jit-compile``)."""
    c = CONFIGS[config]
    jit = "on" if c["step_jit"] else ("off" if c["warp_jit"] is False else "auto")
    return c["precision"], jit


def _first_subject_dataset(splits):
    """The first :class:`~regseg.datasets.SubjectDataset` among ``splits``' parts (the training
    images read from NIfTI), else None."""
    from regseg.datasets import SubjectDataset

    seen, todo = set(), [splits]
    while todo:
        part = todo.pop(0)
        if id(part) in seen or part is None:
            continue
        seen.add(id(part))
        if isinstance(part, SubjectDataset):
            return part
        for name in ("train", "dataset", "pairs", "datasets", "parts"):
            value = getattr(part, name, None)
            if isinstance(value, dict):
                todo.extend(value.values())
            elif isinstance(value, (list, tuple)):
                todo.extend(value)
            elif value is not None:
                todo.append(value)
    return None


def _preprocessing_rows(ctx, case, repeats):
    """Seconds per subject to read and preprocess from NIfTI (the recipe, no cache) against
    reading the result back from the on-disk preprocessing cache (issue 11's cache)."""
    import tempfile

    from regseg.datasets import SubjectDataset
    from regseg.datasets.cache import PreprocessingCache

    source = _first_subject_dataset(ctx.splits)
    if source is None:
        return []
    subjects = source.subjects[:max(1, min(3, len(source.subjects)))]
    with tempfile.TemporaryDirectory() as folder:
        fresh = SubjectDataset(source.name, source.is_paper_dataset, subjects, source.recipe)
        cached = SubjectDataset(source.name, source.is_paper_dataset, subjects, source.recipe,
                                disk_cache=PreprocessingCache(folder))
        for i in range(len(subjects)):
            cached.load(i)  # fills the cache
        timings = interleaved(
            {"from NIfTI (read, recipe)": lambda: [fresh.load(i) for i in range(len(subjects))],
             "from the preprocessing cache": lambda: [cached.load(i)
                                                      for i in range(len(subjects))]},
            repeats)
        shape = "x".join(map(str, fresh.load(0).shape))
    rows = []
    for variant, timing in timings.items():
        timing = {k: v / len(subjects) for k, v in timing.items()}
        rows.append(dict(section="pipeline", case=case, variant=variant,
                         measure=f"seconds per subject ({shape})", setting="default", **timing))
    return rows


def _runner_rows(job):
    """A reproduction's input pipeline and training step as its runner builds them
    (:func:`regseg.training.runner.prepare`, :meth:`Method.training_setup`), on its data."""
    import importlib

    import tensorflow as tf

    from regseg.training.performance import configure
    from regseg.training.runner import prepare

    name, preset, method_keys = job["reproduction"], job["preset"], job["methods"]
    repeats, batches = int(job["repeats"]), int(job.get("batches", 8))
    repro = importlib.import_module(f"regseg.reproductions.{name}.reproduction").REPRODUCTION
    argv = ["--preset", preset, "--no-download", *job.get("args", [])]
    if job.get("data_root"):
        argv += ["--data-root", job["data_root"]]
    t0 = time.perf_counter()
    ctx, _ = prepare(repro, argv)
    data_seconds = time.perf_counter() - t0
    case = f"{name} {preset} ({ctx.dataset_key})"
    rows = [dict(section="pipeline", case=case, variant="runner: load and check every subject",
                 measure="seconds (once per run)", seconds=data_seconds,
                 median_seconds=data_seconds, setting="default", dataset=ctx.dataset_name)]
    rows += _preprocessing_rows(ctx, case, repeats)
    methods = repro.methods()
    steps, memory = {}, {}
    for key in method_keys:
        method = methods[key]
        for config in job["configs"]:
            configure(*runner_settings(config))
            setup = method.training_setup(ctx)
            iterator = iter(setup.dataset)
            batch = next(iterator)
            if config == job["configs"][0]:  # the pipeline alone, after its first batch
                t0 = time.perf_counter()
                for _ in range(batches):
                    tf.nest.map_structure(np.asarray, next(iterator))
                seconds = (time.perf_counter() - t0) / batches
                rows.append(dict(section="pipeline", case=case, method=key, config=config,
                                 variant=f"{key}: training batches ({setup.batch_size} per batch"
                                         f"{', ' + setup.description if setup.description else ''})",
                                 measure="seconds per batch", seconds=seconds,
                                 median_seconds=seconds, batch_size=setup.batch_size,
                                 setting="default"))
            model = setup.model
            model.make_train_function()

            def fn(model=model, batch=batch):  # one step of fit on this batch, as fit sees it
                return tf.nest.map_structure(np.asarray, model.train_function(iter([batch])))
            start = time.perf_counter()
            fn()  # tracing and compilation
            first = time.perf_counter() - start
            fn()
            before = rss_mb()
            reset = reset_peak_rss()
            fn()
            steps[(key, config)] = fn
            memory[(key, config)] = dict(peak_rss_mb=peak_rss_mb() if reset else None,
                                         rss_before_mb=before, first_call_seconds=first,
                                         batch_size=setup.batch_size)
    for (key, config), timing in interleaved(steps, repeats, warm=False).items():
        rows.append(dict(section="pipeline", case=case, method=key, config=config,
                         variant=f"{key}: {CONFIGS[config]['label']}",
                         measure="training step", setting="default",
                         **timing, **memory[(key, config)]))
    configure("float32", "auto")
    return rows


def worker_main(argv):
    """``python benchmarks/run.py --worker JSON``: print the rows as one JSON line."""
    rows = worker(json.loads(argv[0]))
    print("BENCHMARK-ROWS " + json.dumps(rows), flush=True)
