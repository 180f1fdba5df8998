"""MirroredStrategy: one replica vs two replicas (two logical CPU devices).

The same global batch, the same initial weights: the loss of one training
step and the updated weights must agree, i.e. the per-replica losses are
scaled by the global batch and the L1 penalties of eq. 5 by the replica batch.
Runs in a subprocess because logical devices must be set before TensorFlow
initialises.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    from regseg.training.distribute import make_strategy, split_cpu
    split_cpu(2)
    import keras
    from regseg.reproductions.ureSnet.model import UReSNetConfig, build_ureSnet, losses_and_weights

    shape = (8, 12, 8)
    # larger regulariser weights than the paper's so that eq. 5 counts in the loss
    cfg = UReSNetConfig(input_shape=shape, alpha=0.5, beta=1e-2)
    rng = np.random.default_rng(0)
    x = {"moving": rng.normal(size=(2, *shape, 1)).astype("float32"),
         "reference": rng.normal(size=(2, *shape, 1)).astype("float32")}
    seg = np.eye(4, dtype="float32")[rng.integers(0, 4, (2, *shape))]
    y = {"deformed": x["reference"], "moving_seg": seg, "warped_seg": seg[::-1]}
    keras.utils.set_random_seed(1)
    _, ref_model = build_ureSnet(cfg)
    weights = [rng.normal(size=w.shape).astype("float32") * 0.05 for w in ref_model.get_weights()]
    results = {}
    for n in (1, 2):
        strategy = make_strategy(n_cpu_replicas=n)
        assert strategy.num_replicas_in_sync == n, strategy.num_replicas_in_sync
        with strategy.scope():
            train, full = build_ureSnet(cfg)
            full.set_weights(weights)
            loss, w = losses_and_weights(cfg)
            train.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, loss_weights=w)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
        hist = train.fit(ds, epochs=1, verbose=0)
        results[n] = {"loss": float(hist.history["loss"][0]),
                      "weights": [float(np.abs(v).sum()) for v in full.get_weights()]}
    print("RESULT" + json.dumps(results))
''')


def test_one_and_two_replicas_agree():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    one, two = res["1"], res["2"]
    assert abs(one["loss"] - two["loss"]) <= 1e-4 * max(1.0, abs(one["loss"]))
    # the SGD step moved the weights identically
    for a, b in zip(one["weights"], two["weights"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
