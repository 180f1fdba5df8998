"""The warp section of the benchmark suite alone (kept for its old command line).

    python benchmarks/bench_warp.py [--quick] [other options of benchmarks/run.py]

Same as ``python benchmarks/run.py --sections warp``: regseg's warp (every sampler, with and
without XLA) against PyTorch's ``grid_sample`` and scipy's ``map_coordinates`` at 64^3 and 128^3,
measured in the same run; the report goes to ``results/benchmarks/<host kind>/`` (file stem
``warp-quick`` / ``warp-full``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    stem = "warp-quick" if "--quick" in args else "warp-full"
    sys.exit(run.main(["--sections", "warp", "--name", stem, *args]))
