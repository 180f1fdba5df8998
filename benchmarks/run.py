"""The benchmark suite (issue 11): every peer measured in the same run, reported as ratios.

    python benchmarks/run.py [--quick] [--sections warp,cost_volume,steps,pipeline,inference,hd95]
                             [--out results/benchmarks] [--repeats N] [--data-root DIR]

Writes ``<out>/<host kind>/{quick,full}.md`` and ``.csv`` (host kind e.g.
``cpu-2cores-amd-epyc``) with the commit (``dirty`` when the working tree has changes), the
library versions, the CPU model, flags and cores, and the load average before and after (the
times of a loaded machine are noisy; the ratios of one run are what compare).

Sections:

* ``warp``: the dense 3-D linear warp at 64^3 and 128^3, batch 1 and 2, forward and
  forward+backward: regseg's samplers with and without XLA against PyTorch's ``grid_sample``
  (CPU, align_corners=True, padding_mode="border"; the optional ``bench`` extra, skipped with a
  note when PyTorch is absent) and scipy's ``map_coordinates`` (forward);
* ``cost_volume``: the pyramid's cost volume (d = 2) at its feature sizes, forward and
  forward+backward, against a plain per-shift slicing reference;
* ``steps``: one training step of U-ReSNet and of the registration-only network at the quick
  size 80x104x88 (batch 1, MirroredStrategy as the runner), broken down into forward,
  forward+backward, warp and loss, with the peak resident memory, for each configuration
  against the float32, no-XLA baseline (one process per network; the full run adds the
  pyramid's step at its quick size 32^3);
* ``pipeline``: every reproduction through its own runner (``regseg.training.runner.prepare``
  and ``Method.training_setup``) at its quick preset, on its data (``--data-root``, default
  ``$REGSEG_DATA_ROOT``, else ``../shared/data`` beside the repository; without data the runner's
  demo): the training step of its networks per configuration, the input pipeline's seconds per
  batch against it (the headroom: > 1 and the input never stalls training), the time to read and
  preprocess a subject from NIfTI against reading it back from the preprocessing cache, and the
  runner's one-off load and check of every subject;
* ``inference``: U-ReSNet at the paper's 160x176x208 and the pyramid at 64^3 beside the paper's
  4.83 s CPU / 0.31 s GPU per pair;
* ``hd95``: the evaluation's HD95 against the pooled full-volume HD95 it replaced.

``--quick`` uses fewer repeats and configurations (under 10 minutes on 2 idle cores); the full
run adds the whole-step-XLA and thread configurations for both networks.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cases  # noqa: E402

SECTIONS = ("warp", "cost_volume", "steps", "pipeline", "inference", "hd95")

#: what each mode measures: steps / inference map a model to the configurations measured side
#: by side in its worker (cases.CONFIGS) and to the process-wide settings measured in workers of
#: their own (cases.PROCESS_SETTINGS; the suite default configuration only)
PLANS = {
    "quick": dict(repeats=5, warp_repeats=5, warp_sizes=(64, 128), warp_batches=(1, 2),
                  cv_levels=(0, 1, 2, 3, 4),
                  steps={"ureSnet": dict(configs=("baseline", "warp_xla", "bf16",
                                                  "bf16_warp_xla")),
                         "registration_only": dict(configs=("baseline", "warp_xla", "bf16",
                                                            "bf16_warp_xla"))},
                  pipeline=[dict(reproduction="ureSnet", methods=("ureSnet",),
                                 configs=("warp_xla",)),
                            dict(reproduction="pyramid", methods=("pyramid",),
                                 configs=("warp_xla", "bf16_warp_xla"), repeats=3),
                            dict(reproduction="deepatlas", methods=("semi_seg_n5", "semi_reg_n5"),
                                 configs=("warp_xla", "bf16_warp_xla")),
                            dict(reproduction="diffeomorphic_unet", methods=("a1e-5",),
                                 configs=("baseline", "warp_xla")),
                            dict(reproduction="cooperating", methods=("cooperating",),
                                 configs=("warp_xla", "bf16_warp_xla"))],
                  inference={"ureSnet": dict(configs=("baseline", "warp_xla", "bf16_warp_xla")),
                             "pyramid": dict(configs=("warp_xla", "bf16_warp_xla"),
                                             repeats=2)},
                  hd95_shape=(96, 112, 128)),
    "full": dict(repeats=7, warp_repeats=11, warp_sizes=(64, 128), warp_batches=(1, 2),
                 cv_levels=(0, 1, 2, 3, 4),
                 steps={"ureSnet": dict(configs=("baseline", "warp_xla", "step_xla", "bf16",
                                                 "bf16_warp_xla"),
                                        settings=("inter_op_1", "intra_op_1", "onednn_off")),
                        "registration_only": dict(configs=("baseline", "warp_xla", "step_xla",
                                                           "bf16", "bf16_warp_xla"),
                                                  settings=("inter_op_1", "onednn_off")),
                        "pyramid": dict(configs=("baseline", "warp_xla", "bf16",
                                                 "bf16_warp_xla"))},
                 pipeline=[dict(reproduction="ureSnet", methods=("ureSnet", "registration_only"),
                                configs=("baseline", "warp_xla", "bf16_warp_xla")),
                           dict(reproduction="pyramid", methods=("pyramid",),
                                configs=("baseline", "warp_xla", "bf16", "bf16_warp_xla")),
                           dict(reproduction="deepatlas", methods=("semi_seg_n5", "semi_reg_n5"),
                                configs=("baseline", "warp_xla", "bf16", "bf16_warp_xla")),
                           dict(reproduction="diffeomorphic_unet", methods=("a1e-5",),
                                configs=("baseline", "warp_xla", "bf16_warp_xla")),
                           dict(reproduction="cooperating", methods=("cooperating",),
                                configs=("baseline", "warp_xla", "bf16", "bf16_warp_xla"))],
                 inference={"ureSnet": dict(configs=("baseline", "warp_xla", "bf16",
                                                     "bf16_warp_xla")),
                            "pyramid": dict(configs=("baseline", "warp_xla", "bf16",
                                                     "bf16_warp_xla"), repeats=3)},
                 hd95_shape=(160, 192, 224)),
}


# ---------------------------------------------------------------------------------- provenance

def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> str:
    """``git rev-parse HEAD``, with ``-dirty`` when ``git status --porcelain`` lists changes."""
    head = _git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if _git("status", "--porcelain") else "")


def cpu_info() -> dict:
    """CPU model, the SIMD flags that matter here, logical cores usable by this process."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
        found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(found.group(1).split()) if found else set()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"model": model, "cores": cores, "flags": [f for f in wanted if f in flags]}


def host_kind(cpu: dict, gpu: str | None = None) -> str:
    """``cpu-<n>cores-<model slug>`` (or ``gpu-<name slug>``): the results folder's name."""
    slug = lambda s: re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")  # noqa: E731
    if gpu:
        return f"gpu-{slug(gpu)}"
    return f"cpu-{cpu['cores']}cores-{slug(cpu['model'])}"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "tensorflow", "keras", "torch"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def gpu_name() -> str | None:
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return details.get("device_name", "gpu")


# ------------------------------------------------------------------------------ orchestration

def run_worker(job: dict, timeout: float = 1800) -> list:
    """One job of :func:`cases.worker` in a fresh Python process (its own settings, memory)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [dict(section=job["kind"], case=_job_name(job), variant=", ".join(job["configs"]),
                     measure="error", note=f"timed out after {timeout:.0f} s")]
    for line in proc.stdout.splitlines():
        if line.startswith("BENCHMARK-ROWS "):
            return json.loads(line[len("BENCHMARK-ROWS "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return [dict(section=job["kind"], case=_job_name(job), variant=", ".join(job["configs"]),
                 measure="error", note=" | ".join(tail))]


def _job_name(job: dict) -> str:
    return job.get("model") or f"{job.get('reproduction')} {job.get('preset', '')}".strip()


def default_data_root() -> str | None:
    """``$REGSEG_DATA_ROOT``, else ``../shared/data`` beside the repository if it exists."""
    root = os.environ.get("REGSEG_DATA_ROOT")
    if root:
        return root
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def collect(sections, plan, repeats, log=print, explicit_repeats=False,
            data_root=None) -> list:
    rows = []
    if "warp" in sections:
        log("warp ...")
        warp_repeats = repeats if explicit_repeats else plan.get("warp_repeats", repeats)
        rows += cases.warp_rows(plan["warp_sizes"], plan["warp_batches"], warp_repeats)
    if "cost_volume" in sections:
        log("cost volume ...")
        rows += cases.cost_volume_rows(plan["cv_levels"], repeats)
    for section, kind in (("steps", "step"), ("inference", "inference")):
        if section not in sections:
            continue
        for model, spec in plan[section].items():
            jobs = [("default", list(spec["configs"]))]
            jobs += [(setting, ["warp_xla"]) for setting in spec.get("settings", ())]
            for setting, configs in jobs:
                log(f"{section}: {model}, {setting} settings, {', '.join(configs)} ...")
                job = dict(kind=kind, model=model, configs=configs, setting=setting,
                           repeats=spec.get("repeats", repeats))
                shape = plan.get("shapes", {}).get(model)
                if shape:  # tests: small sizes
                    job["shape"] = list(shape)
                rows += run_worker(job)
    if "pipeline" in sections:
        for spec in plan.get("pipeline", ()):
            job = dict(kind="runner", preset=spec.get("preset", "quick"),
                       reproduction=spec["reproduction"], methods=list(spec["methods"]),
                       configs=list(spec["configs"]), repeats=spec.get("repeats", repeats),
                       batches=spec.get("batches", 16), data_root=data_root,
                       args=list(spec.get("args", ())))
            log(f"pipeline: {spec['reproduction']} {job['preset']}, "
                f"{', '.join(job['methods'])}: {', '.join(job['configs'])} ...")
            rows += run_worker(job)
    if "hd95" in sections:
        log("hd95 ...")
        rows += cases.hd95_rows(plan["hd95_shape"], repeats)
    return rows


# ----------------------------------------------------------------------------------- ratios

WARP_DEFAULT = cases.WARP_DEFAULT
WARP_BEFORE = cases.WARP_BEFORE


def add_ratios(rows) -> None:
    """Ratios within one run: ``torch_over_this`` and ``scipy_over_this`` (warp),
    ``reference_over_this`` (cost volume), ``baseline_over_this`` (steps and inference:
    the float32 no-XLA configuration of the same model and measure)."""
    def lookup(section, case, measure, variant_test):
        for r in rows:
            if (r.get("section") == section and r.get("case") == case
                    and r.get("measure") == measure and variant_test(r)):
                return r.get("seconds")
        return None

    for r in rows:
        sec, case, measure, seconds = r.get("section"), r.get("case"), r.get("measure"), \
            r.get("seconds")
        if not seconds:
            continue
        if sec == "warp":
            torch = lookup(sec, case, measure, lambda q: q["variant"].startswith("torch"))
            scipy = lookup(sec, case, measure, lambda q: q["variant"].startswith("scipy"))
            before = lookup(sec, case, measure, lambda q: q["variant"] == WARP_BEFORE)
            if torch:
                r["torch_over_this"] = torch / seconds
            if scipy:
                r["scipy_over_this"] = scipy / seconds
            if before:
                r["before_over_this"] = before / seconds
        elif sec == "cost_volume":
            ref = lookup(sec, case, measure, lambda q: q["variant"].startswith("plain"))
            before = lookup(sec, case, measure,
                            lambda q: q["variant"] == "regseg cost_volume, no XLA")
            if before:
                r["before_over_this"] = before / seconds
            if ref:
                r["reference_over_this"] = ref / seconds
        elif sec in ("step", "inference", "pipeline"):
            base = lookup(sec, case, measure, lambda q: q.get("config") == "baseline"
                          and q.get("setting", "default") == "default"
                          and q.get("method") == r.get("method"))
            if base and r.get("config"):
                r["baseline_over_this"] = base / seconds
            default = lookup(sec, case, measure, lambda q: q.get("config") == "warp_xla"
                             and q.get("setting", "default") == "default"
                             and q.get("method") == r.get("method"))
            if default and r.get("config"):
                r["default_over_this"] = default / seconds
            if sec == "pipeline" and measure == "training step":
                batch = lookup(sec, case, "seconds per batch",
                               lambda q: q.get("method") == r.get("method"))
                if batch:
                    r["pipeline_headroom"] = seconds / batch
        elif sec == "hd95":
            old = lookup(sec, case, measure, lambda q: q["variant"].startswith("pooled"))
            if old:
                r["former_over_this"] = old / seconds


# ---------------------------------------------------------------------------------- report

CSV_COLUMNS = ["section", "case", "variant", "config", "setting", "measure", "seconds",
               "median_seconds",
               "torch_over_this", "scipy_over_this", "before_over_this", "reference_over_this",
               "baseline_over_this", "default_over_this", "former_over_this",
               "pipeline_headroom",
               "max_abs_diff_vs_scipy", "max_abs_diff",
               "peak_rss_mb", "rss_before_mb", "first_call_seconds", "paper_cpu_seconds",
               "paper_gpu_seconds", "parameters", "value", "note"]


def write_csv(path: Path, rows) -> None:
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS + extra)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in r.items()})


def _s(x):
    return "—" if x is None else (f"{x:.3f}" if x >= 0.01 else f"{x * 1e3:.2f} ms")


def _x(x):
    return "—" if x is None else f"{x:.2f}×"


def _mib(row):
    peak, before = row.get("peak_rss_mb"), row.get("rss_before_mb")
    if peak is None:
        return "—"
    return f"{peak:.0f} MiB" + ("" if before is None else f" ({before:.0f})")


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return out


def _get(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return {}


def headline(rows) -> list:
    out = []
    r = _get(rows, section="warp", case="128^3, batch 1", variant=WARP_DEFAULT,
             measure="forward+backward")
    if r.get("torch_over_this"):
        out.append(f"- warp forward+backward at 128³ (batch 1): torch `grid_sample` / regseg = "
                   f"**{r['torch_over_this']:.2f}** ({_s(r['seconds'])} regseg; target ≥ 1.5); "
                   f"before issue 11 / now = {_x(r.get('before_over_this'))}")
    elif r:
        out.append(f"- warp forward+backward at 128³ (batch 1): {_s(r['seconds'])} "
                   f"(PyTorch absent: no ratio)")
    for model in ("ureSnet", "registration_only"):
        case = f"{model} {'x'.join(map(str, cases.URESNET_QUICK_SHAPE))}, batch 1"
        steps = [q for q in rows if q.get("section") == "step" and q.get("case") == case
                 and q.get("measure") == "training step (train_on_batch)"
                 and q.get("seconds")]
        base = _get(steps, config="baseline", setting="default")
        default = _get(steps, config="warp_xla", setting="default")
        if base and default:
            best = min(steps, key=lambda q: q["seconds"])
            out.append(f"- {model} training step (80×104×88): suite default "
                       f"{_s(default['seconds'])} "
                       f"vs float32 no-XLA baseline {_s(base['seconds'])}: "
                       f"**{_x(default.get('baseline_over_this'))}**; fastest measured: "
                       f"{best['variant']} ({_x(best.get('baseline_over_this'))})")
    summary = pipeline_summary(rows)
    headrooms = [(r["pipeline_headroom"], case, r["variant"].partition(": ")[0])
                 for case, entry in summary.items() for r in entry["steps"]
                 if r.get("config") == "warp_xla" and r.get("pipeline_headroom")]
    if headrooms:
        low = min(headrooms)
        out.append(f"- input pipeline against the training step (suite default), every "
                   f"reproduction's quick preset: headroom ≥ **{low[0]:.0f}×** (lowest: "
                   f"{low[1]}, {low[2]}); the input never stalls training")
    bf16 = [(r["default_over_this"], case.split(" (")[0], r["variant"].partition(": ")[0])
            for case, entry in summary.items() for r in entry["steps"]
            if r.get("config") == "bf16_warp_xla" and r.get("default_over_this")]
    if bf16:
        out.append("- mixed bfloat16 against the suite default (float32), training step at the "
                   "quick presets: " + ", ".join(f"{c} {m} {x:.2f}×" for x, c, m in bf16))
    caches = [(e["nifti"]["seconds"] / e["cache"]["seconds"], case)
              for case, e in summary.items() if e.get("nifti") and e.get("cache")]
    if caches:
        out.append(f"- preprocessing cache: a subject read back from it "
                   f"{min(caches)[0]:.0f}–{max(caches)[0]:.0f}× faster than read and "
                   f"preprocessed from NIfTI")
    r = _get(rows, section="inference", case="pyramid 64x64x64, batch 1", config="warp_xla",
             setting="default")
    if r.get("seconds"):
        out.append(f"- pyramid inference at 64³: **{_s(r['seconds'])}** per pair on this machine "
                   f"(suite default) beside the paper's {cases.PYRAMID_PAPER_SECONDS['CPU']} s CPU "
                   f"/ {cases.PYRAMID_PAPER_SECONDS['GPU']} s GPU")
    return out


def pipeline_summary(rows) -> dict:
    """``{case: {"load": row, "nifti": row, "cache": row, "steps": [rows]}}`` of the pipeline
    section (steps: the training-step rows, each with its ``pipeline_headroom``)."""
    out = {}
    for r in rows:
        if r.get("section") != "pipeline" or r.get("measure") == "error":
            continue
        entry = out.setdefault(r["case"], {"steps": []})
        if r["measure"] == "training step":
            entry["steps"].append(r)
        elif r["variant"].startswith("runner: load"):
            entry["load"] = r
        elif r["variant"].startswith("from NIfTI"):
            entry["nifti"] = r
        elif r["variant"].startswith("from the preprocessing cache"):
            entry["cache"] = r
    return out


def pipeline_markdown(rows) -> list:
    summary = pipeline_summary(rows)
    if not summary:
        return []
    lines = ["## Every reproduction's training step and input pipeline (quick presets, their "
             "data, through the runner)", "",
             "Each reproduction in a worker of its own: `regseg.training.runner.prepare` loads "
             "and checks the quick preset's data as `run.py` does, and each method's "
             "`training_setup` builds its training model and `tf.data` batches (the first "
             "fold's). `step`: one step of `fit` on a fixed batch (the model's `train_function`, "
             "under MirroredStrategy). `pipeline`: seconds per batch of the training `tf.data` "
             "alone (16 batches after the first). `headroom` = step / pipeline: above 1 the "
             "input pipeline produces batches faster than the step consumes them (with "
             "prefetching it then never stalls training). `baseline/this`: the float32, no-XLA "
             "step / this configuration's (measured in the full run; `--quick` measures the "
             "suite default and bfloat16 here), `default/this`: the suite default's. DeepAtlas: `semi_seg_n5` and `semi_reg_n5` are the "
             "two alternating phases of DA (segmentation network with the anatomy loss, "
             "registration network); the cooperating networks: the joint stage (§2.2 step 3).",
             ""]
    for case, entry in summary.items():
        lines += [f"### {case}", ""]
        load, nifti, cache = entry.get("load"), entry.get("nifti"), entry.get("cache")
        if load:
            lines.append(f"Dataset: {load.get('dataset', '—')}  ")
            lines.append(f"Runner's load and check of every subject (disk cache as the run "
                         f"uses it): {_s(load.get('seconds'))}  ")
        if nifti and cache:
            lines.append(f"One subject, {nifti['measure'].split('(')[-1].rstrip(')')}: read and "
                         f"preprocessed from NIfTI {_s(nifti['seconds'])}, from the "
                         f"preprocessing cache {_s(cache['seconds'])} "
                         f"(**{nifti['seconds'] / cache['seconds']:.0f}×** faster)  ")
        lines.append("")
        table = []
        for r in entry["steps"]:
            method, _, config = r["variant"].partition(": ")
            batch = _get(rows, section="pipeline", case=case, method=r.get("method"),
                         measure="seconds per batch")
            table.append([method, config, _s(r.get("seconds")),
                          _x(r.get("baseline_over_this")), _x(r.get("default_over_this")),
                          _s(batch.get("seconds")),
                          _x(r.get("pipeline_headroom")), _mib(r),
                          _s(r.get("first_call_seconds"))])
        lines += _table(["method", "configuration", "step", "baseline/this", "default/this",
                         "pipeline per batch",
                         "headroom", "peak RSS (before)", "first call"], table) + [""]
    return lines


def markdown(rows, env, args, elapsed) -> str:
    v = env["versions"]
    lines = [f"# Benchmarks ({env['mode']}): {env['host_kind']}", "",
             f"Command: `{env['command']}`  ",
             f"Date: {env['date']}; wall time {elapsed / 60:.1f} min  ",
             f"Commit: `{env['commit']}`  ",
             f"CPU: {env['cpu']['model']}, {env['cpu']['cores']} cores usable, flags "
             f"{', '.join(env['cpu']['flags']) or '—'}; GPU: {env['gpu'] or 'none'}  ",
             f"Load average (1 min) before / after: {env['load_before']:.2f} / "
             f"{env['load_after']:.2f} (other work on the machine makes times noisy; ratios of "
             f"one run compare)  ",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) +
             ("" if v.get("torch") else "; PyTorch absent (install the `bench` extra: "
              "`pip install -e .[bench]`), its rows are skipped"),
             f"Times: the best of {env['repeats']} calls ({env['warp_repeats']} for the warp; "
             f"median in the CSV) after one warm-up "
             f"call (tracing, XLA compilation), seconds unless marked ms; the variants compared "
             f"in one table ran interleaved in one process (one call of each in turn).", ""]
    head = headline(rows)
    if head:
        lines += ["## Headline", ""] + head + [""]
    errors = [r for r in rows if r.get("measure") == "error"]
    if errors:
        lines += ["## Failed configurations", ""]
        lines += [f"- {r.get('section')} {r.get('case')} {r.get('variant')}: {r.get('note')}"
                  for r in errors] + [""]

    warp = [r for r in rows if r.get("section") == "warp"]
    if warp:
        lines += ["## Dense warp (3-D, linear, border padding)", "",
                  "Ratios: the peer's time / this row's time (> 1: this row is faster). "
                  "`max |diff|`: forward values against scipy `map_coordinates(order=1, "
                  "mode=\"nearest\")`.", ""]
        for case in dict.fromkeys(r["case"] for r in warp):
            lines += [f"### {case}", ""]
            table = []
            for variant in dict.fromkeys(r["variant"] for r in warp if r["case"] == case):
                f = _get(warp, case=case, variant=variant, measure="forward")
                b = _get(warp, case=case, variant=variant, measure="forward+backward")
                diff = f.get("max_abs_diff_vs_scipy")
                table.append([variant, _s(f.get("seconds")), _s(b.get("seconds")),
                              _x(f.get("torch_over_this")), _x(b.get("torch_over_this")),
                              _x(f.get("scipy_over_this")), _x(b.get("before_over_this")),
                              "—" if diff is None else f"{diff:.1e}"])
            lines += _table(["implementation", "fwd", "fwd+bwd", "torch/this fwd",
                             "torch/this fwd+bwd", "scipy/this fwd", "before/this fwd+bwd",
                             "max \\|diff\\|"], table) + [""]
        if not v.get("torch"):
            lines += ["PyTorch is not installed: the `grid_sample` rows are skipped.", ""]

    cv = [r for r in rows if r.get("section") == "cost_volume"]
    if cv:
        lines += ["## Cost volume (d = 2, 125 channels, the pyramid's feature sizes at 64³)", ""]
        table = []
        for case in dict.fromkeys(r["case"] for r in cv):
            for variant in dict.fromkeys(r["variant"] for r in cv if r["case"] == case):
                f = _get(cv, case=case, variant=variant, measure="forward")
                b = _get(cv, case=case, variant=variant, measure="forward+backward")
                table.append([case, variant, _s(f.get("seconds")), _s(b.get("seconds")),
                              _x(f.get("reference_over_this")), _x(b.get("reference_over_this")),
                              _x(b.get("before_over_this")), f"{f.get('max_abs_diff', 0):.1e}"])
        lines += _table(["features", "implementation", "fwd", "fwd+bwd", "reference/this fwd",
                         "reference/this fwd+bwd", "no-XLA/this fwd+bwd", "max \\|diff\\|"],
                        table) + [""]

    steps = [r for r in rows if r.get("section") == "step" and r.get("measure") != "error"]
    if steps:
        lines += ["## Training step at the quick presets' sizes (batch 1, MirroredStrategy as the "
                  "runner)",
                  "", "One worker process per network builds every configuration and times them "
                  "interleaved; thread and oneDNN settings run in workers of their own (compared "
                  "with the main worker's baseline, across processes). `baseline/this`: the "
                  "float32, no-XLA step time / this configuration's (> 1: faster). Peak RSS: "
                  "the process's peak resident memory during one step (Linux `VmHWM`, reset "
                  "before it; the other configurations' models stay resident), in brackets the "
                  "resident memory before the step. First call: tracing and compilation.", ""]
        measures = list(dict.fromkeys(r["measure"] for r in steps))
        for case in dict.fromkeys(r["case"] for r in steps):
            lines += [f"### {case}", ""]
            table = []
            for variant in dict.fromkeys(r["variant"] for r in steps if r["case"] == case):
                cells = [variant]
                step = _get(steps, case=case, variant=variant,
                            measure="training step (train_on_batch)")
                for m in measures:
                    cells.append(_s(_get(steps, case=case, variant=variant,
                                         measure=m).get("seconds")))
                cells.append(_x(step.get("baseline_over_this")))
                cells.append(_mib(step))
                cells.append(_s(step.get("first_call_seconds")))
                table.append(cells)
            lines += _table(["configuration", *measures, "baseline/this (step)",
                             "peak RSS (before)", "first call"], table) + [""]

    lines += pipeline_markdown(rows)

    inf = [r for r in rows if r.get("section") == "inference" and r.get("measure") != "error"]
    if inf:
        lines += ["## Inference (one pair, batch 1, `tf.function`)", ""]
        table = []
        for r in inf:
            paper = (f"{r['paper_cpu_seconds']} s CPU / {r['paper_gpu_seconds']} s GPU"
                     if r.get("paper_cpu_seconds") else "—")
            table.append([r["case"], r["variant"], _s(r["seconds"]),
                          _x(r.get("baseline_over_this")), _x(r.get("default_over_this")),
                          _s(r.get("first_call_seconds")),
                          _mib(r), paper])
        lines += _table(["model", "configuration", "seconds", "baseline/this", "default/this",
                         "first call (tracing, compilation)", "peak RSS (before)", "paper"],
                        table) + [""]
        lines += ["The paper's times (Gunnarsson et al. 2020, Table 1) are per pair, prediction "
                  "only, on the authors' machine (CPU and core count not given).", ""]

    hd = [r for r in rows if r.get("section") == "hd95"]
    if hd:
        lines += ["## HD95 (evaluation)", ""]
        table = [[r["case"], r["variant"], _s(r["seconds"]), _x(r.get("former_over_this")),
                  f"{r.get('value', float('nan')):.3f}"] for r in hd]
        lines += _table(["labels", "implementation", "seconds", "former/this", "HD95 (voxels)"],
                        table) + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and configurations (< 10 min on 2 idle cores)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"),
                   help="results folder; the host kind is added below it")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per measurement (default: quick 5, the warp 7; full 7, "
                        "the warp 11)")
    p.add_argument("--name", default=None,
                   help="file name stem (default: quick or full)")
    p.add_argument("--data-root", default=default_data_root(),
                   help="the pipeline section's data (default: $REGSEG_DATA_ROOT, else "
                        "../shared/data beside the repository)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        cases.worker_main(argv[1:])
        return 0
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    repeats = args.repeats or plan["repeats"]
    start = time.time()
    load_before = os.getloadavg()[0]
    rows = collect(args.sections, plan, repeats,
                   log=lambda m: print(f"[{time.time() - start:6.0f} s] {m}", flush=True),
                   explicit_repeats=args.repeats is not None, data_root=args.data_root)
    add_ratios(rows)
    cpu = cpu_info()
    gpu = gpu_name()
    env = dict(mode=mode, host_kind=host_kind(cpu, gpu), commit=commit(), cpu=cpu, gpu=gpu,
               versions=versions(), repeats=repeats,
               warp_repeats=args.repeats or plan.get("warp_repeats", repeats),
               load_before=load_before,
               load_after=os.getloadavg()[0],
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               command="python benchmarks/run.py " + " ".join(argv))
    out = Path(args.out) / env["host_kind"]
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or mode
    elapsed = time.time() - start
    write_csv(out / f"{stem}.csv", rows)
    (out / f"{stem}.md").write_text(markdown(rows, env, args, elapsed) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1)
                                      + "\n")
    print(f"wrote {out / stem}.md, .csv, .json in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
