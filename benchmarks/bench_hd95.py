"""Speed of ``regseg.evaluation.metrics.hd95`` (the Learn2Reg scorer's HD95) against the suite's
earlier HD95 (pooled surface-voxel distances, full-volume distance transforms, kept as
``hausdorff_distance(percentile=95)``), measured in the same run.

    python benchmarks/bench_hd95.py [--shape 160 192 224] [--repeats 3]

Label maps: in a volume of ``--shape`` voxels (the OASIS / Learn2Reg brain size by default),
a small structure (a ~12-voxel-radius blob, hippocampus-sized) and a large one (~45 voxels),
each against a copy shifted by 2 voxels and smoothly deformed. Prints the median time of each
and the ratio old / new (a ratio, not an absolute time, compares across machines).
"""

import argparse
import time

import numpy as np
from scipy import ndimage


def _median_time(fn, repeats):
    fn()  # warm-up (imports, allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _blob(shape, centre, radius, seed):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 4) * 30
    return dist + noise < radius


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[160, 192, 224])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from regseg.evaluation.metrics import hausdorff_distance, hd95

    shape = tuple(args.shape)
    centre = [s / 2 for s in shape]
    print(f"volume {shape}, {np.prod(shape):,} voxels, median of {args.repeats}")
    for name, radius in (("small structure", 12), ("large structure", 45)):
        a = _blob(shape, centre, radius, 0)
        b = _blob(shape, [c + 2 for c in centre], radius, 1)
        old = _median_time(lambda: hausdorff_distance(a, b, spacing=1.0, percentile=95),
                           args.repeats)
        new = _median_time(lambda: hd95(a, b, spacing=1.0), args.repeats)
        print(f"{name:16s} ({int(a.sum()):,} voxels): HD95 new {hd95(a, b, spacing=1.0):.3f} "
              f"vs pooled {hausdorff_distance(a, b, spacing=1.0, percentile=95):.3f} voxels; "
              f"old {old * 1e3:8.1f} ms, new {new * 1e3:8.1f} ms, ratio old / new {old / new:.1f}")


if __name__ == "__main__":
    main()
