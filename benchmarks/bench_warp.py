"""Speed of the dense spatial transformer against scipy, measured in the same run.

    python benchmarks/bench_warp.py [--shape 80 104 88] [--repeats 5]

Prints the median time of ``regseg.layers.warp`` (trilinear, border; eager and
``tf.function``) and of ``scipy.ndimage.map_coordinates(order=1,
mode="nearest")`` on the same random image and sampling grid, and their
ratio.  A ratio, not an absolute time, is what compares across machines.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy import ndimage


def _median_time(fn, repeats):
    fn()  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[80, 104, 88])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import tensorflow as tf

    from regseg.layers import identity_grid, warp

    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *shape, 1)).astype("float32")
    grid = (np.asarray(identity_grid(shape)) + rng.normal(scale=2.0, size=(*shape, 3))).astype("float32")[None]
    compiled = tf.function(lambda a, b: warp(a, b))
    ours_eager = _median_time(lambda: np.asarray(warp(image, grid)), args.repeats)
    ours_graph = _median_time(lambda: np.asarray(compiled(image, grid)), args.repeats)
    coords = np.moveaxis(grid[0], -1, 0)
    peer = _median_time(lambda: ndimage.map_coordinates(image[0, ..., 0], coords, order=1,
                                                        mode="nearest"), args.repeats)
    print(f"volume {shape}, {np.prod(shape):,} voxels, median of {args.repeats}")
    print(f"regseg warp (eager)       {ours_eager * 1e3:8.1f} ms")
    print(f"regseg warp (tf.function) {ours_graph * 1e3:8.1f} ms")
    print(f"scipy map_coordinates     {peer * 1e3:8.1f} ms")
    print(f"ratio scipy / regseg (tf.function): {peer / ours_graph:.2f}")


if __name__ == "__main__":
    main()
