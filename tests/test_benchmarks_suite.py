"""``benchmarks/run.py``: the report's provenance, ratios, files and the PyTorch skip note.

Tiny sizes only; no time is asserted (the suite measures, the tests check what it writes).
"""

import csv
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402
import run  # noqa: E402


def test_host_kind_commit_and_versions():
    cpu = run.cpu_info()
    assert cpu["cores"] >= 1 and cpu["model"]
    kind = run.host_kind({"model": "AMD EPYC 9B14 96-Core Processor", "cores": 2, "flags": []})
    assert kind == "cpu-2cores-amd-epyc-9b14-96-core-processor"
    assert run.host_kind(cpu, gpu="NVIDIA H100 80GB HBM3") == "gpu-nvidia-h100-80gb-hbm3"
    head = run.commit()
    assert head == "unknown" or len(head.split("-")[0]) == 40
    versions = run.versions()
    assert versions["tensorflow"] and versions["keras"] and "torch" in versions


def test_ratios_within_one_run():
    rows = [dict(section="warp", case="c", variant=run.WARP_DEFAULT, measure="forward+backward",
                 seconds=0.1),
            dict(section="warp", case="c", variant=run.WARP_BEFORE, measure="forward+backward",
                 seconds=0.4),
            dict(section="warp", case="c", variant="torch grid_sample (2 threads)",
                 measure="forward+backward", seconds=0.2),
            dict(section="step", case="m", variant="b", config="baseline", measure="step",
                 seconds=1.0),
            dict(section="step", case="m", variant="x", config="warp_xla", measure="step",
                 seconds=0.8)]
    run.add_ratios(rows)
    assert rows[0]["torch_over_this"] == pytest.approx(2.0)
    assert rows[0]["before_over_this"] == pytest.approx(4.0)
    assert rows[4]["baseline_over_this"] == pytest.approx(1.25)
    assert "torch_over_this" not in rows[3]


@pytest.mark.parametrize("with_torch", [True, False])
def test_small_run_writes_markdown_csv_and_json(tmp_path, monkeypatch, with_torch):
    if with_torch:
        pytest.importorskip("torch")
    else:
        monkeypatch.setattr(cases, "_torch", lambda: None)
        real = run.versions
        monkeypatch.setattr(run, "versions", lambda: {**real(), "torch": None})
    plan = dict(repeats=1, warp_sizes=(8,), warp_batches=(1,), cv_levels=(4,),
                steps={}, inference=(), hd95_shape=(24, 24, 24))
    monkeypatch.setitem(run.PLANS, "quick", plan)
    assert run.main(["--quick", "--sections", "warp,cost_volume", "--out", str(tmp_path)]) == 0
    folder = next(tmp_path.iterdir())
    assert folder.name.startswith("cpu-") or folder.name.startswith("gpu-")
    text = (folder / "quick.md").read_text()
    assert "Commit: `" in text and "Load average" in text and "tensorflow" in text
    assert "### 8^3, batch 1" in text and "## Cost volume" in text
    rows = list(csv.DictReader(open(folder / "quick.csv")))
    variants = {r["variant"] for r in rows if r["section"] == "warp"}
    assert run.WARP_DEFAULT in variants and "scipy map_coordinates" in variants
    torch_rows = [r for r in rows if r["variant"].startswith("torch")]
    if with_torch:
        assert torch_rows and all(float(r["torch_over_this"]) == 1.0 for r in torch_rows)
        assert "torch grid_sample" in text and "## Headline" not in text  # 128^3 not measured
    else:
        assert not torch_rows
        assert "PyTorch is not installed" in text and "PyTorch absent" in text
    # every regseg sampler agrees with scipy (the tests' 1e-5)
    for r in rows:
        if r["section"] == "warp" and r["measure"] == "forward":
            assert float(r["max_abs_diff_vs_scipy"]) < 1e-4, r
        if r["section"] == "cost_volume" and r["measure"] == "forward":
            assert float(r["max_abs_diff"]) < 1e-5, r
    data = json.loads((folder / "quick.json").read_text())
    assert data["environment"]["mode"] == "quick" and data["rows"]


@pytest.mark.slow
def test_step_worker_in_a_fresh_process():
    job = dict(kind="step", model="registration_only", configs=["baseline", "bf16_warp_xla"],
               repeats=1, shape=[8, 8, 8])
    rows = run.run_worker(job, timeout=600)
    assert all(r["measure"] != "error" for r in rows), rows
    run.add_ratios(rows)
    by = {(r["config"], r["measure"]): r for r in rows}
    for config in job["configs"]:
        for measure in ("training step (train_on_batch)", "forward",
                        "forward+backward (loss excluded)", "warp forward+backward (1 channel)",
                        "MSE + LCC loss forward+backward (window 5)"):
            row = by[(config, measure)]
            assert row["seconds"] > 0 and row["median_seconds"] >= row["seconds"]
            assert row["variant"] == cases.CONFIGS[config]["label"]
            assert row["baseline_over_this"] > 0
    step = by[("baseline", "training step (train_on_batch)")]
    assert step["baseline_over_this"] == 1.0
    assert step["peak_rss_mb"] is None or step["peak_rss_mb"] > 100


def test_pipeline_section_through_the_runner(tmp_path, monkeypatch, ixi10_root):
    """The pipeline section times a reproduction through its own runner on its data: the
    headroom is the step over the pipeline's seconds per batch, the baseline ratio is per method,
    and the preprocessing rows compare NIfTI with the cache (both computed here from the CSV)."""
    monkeypatch.setenv("REGSEG_CACHE", str(tmp_path / "cache"))
    plan = dict(repeats=1, pipeline=[dict(reproduction="diffeomorphic_unet", preset="smoke",
                                          methods=("a1e-5",), configs=("baseline", "warp_xla"),
                                          batches=2)])
    monkeypatch.setitem(run.PLANS, "quick", plan)
    assert run.main(["--quick", "--sections", "pipeline", "--out", str(tmp_path / "out"),
                     "--data-root", str(ixi10_root.parent)]) == 0
    folder = next((tmp_path / "out").iterdir())
    rows = list(csv.DictReader(open(folder / "quick.csv")))
    assert not [r for r in rows if r["measure"] == "error"], rows
    steps = {r["config"]: r for r in rows if r["measure"] == "training step"}
    batch = next(r for r in rows if r["measure"] == "seconds per batch")
    assert set(steps) == {"baseline", "warp_xla"} and batch["method"] == "a1e-5"
    for r in steps.values():
        assert float(r["pipeline_headroom"]) == pytest.approx(
            float(r["seconds"]) / float(batch["seconds"]), rel=1e-4)
    assert float(steps["warp_xla"]["baseline_over_this"]) == pytest.approx(
        float(steps["baseline"]["seconds"]) / float(steps["warp_xla"]["seconds"]), rel=1e-4)
    per_subject = {r["variant"] for r in rows if r["measure"].startswith("seconds per subject")}
    assert per_subject == {"from NIfTI (read, recipe)", "from the preprocessing cache"}
    text = (folder / "quick.md").read_text()
    assert "### diffeomorphic_unet smoke (ixi10)" in text and "Dataset: IXI" in text
    assert "input pipeline against the training step" in text
