"""The HD95 section of the benchmark suite alone (kept for its old command line).

    python benchmarks/bench_hd95.py [--quick] [other options of benchmarks/run.py]

Same as ``python benchmarks/run.py --sections hd95``: ``regseg.evaluation.metrics.hd95`` (the
Learn2Reg scorer's HD95) against the suite's earlier pooled full-volume HD95 (kept as
``hausdorff_distance(percentile=95)``) on a small and a large structure, measured in the same
run (160x192x224 in the full run, 96x112x128 with ``--quick``); the report goes to
``results/benchmarks/<host kind>/`` (file stem ``hd95-quick`` / ``hd95-full``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    stem = "hd95-quick" if "--quick" in args else "hd95-full"
    sys.exit(run.main(["--sections", "hd95", "--name", stem, *args]))
