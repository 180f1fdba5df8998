"""Numerical precision and XLA compilation of a run (``--precision``, ``--jit-compile``; issue 11).

Both are process-wide, set once by the runner before any model is built:

* **precision** — ``"float32"`` (the papers' setting, the default of every paper preset) or
  ``"mixed_bfloat16"``: Keras' mixed policy (bfloat16 computations, float32 variables). The
  suite's warps, sampling grids, losses and regularisers compute in float32 under either policy
  (``regseg.layers._checks``), so only the convolutions run in bfloat16. Measured on 2 CPU
  cores with AVX512-BF16 (``results/benchmarks/``): U-ReSNet's training step 1.54x faster
  with XLA on the layers; the losses on a fixed batch agree with float32 within the tolerance
  stated in ``tests/test_layers_mixed_precision.py``.
* **jit_compile** — which parts XLA compiles:

  ====== ===================================================== ==============================
  value  the warp and the cost volume (``regseg.layers``)       the whole training step
  ====== ===================================================== ==============================
  auto   compiled inside graphs unless op determinism is on     Keras' ``"auto"`` (off under
                                                                 every tf.distribute strategy)
  layers always compiled                                        never
  on     (inside the compiled step)                             always, under MirroredStrategy
                                                                 too (Keras' "auto" never is)
  off    never                                                  never
  ====== ===================================================== ==============================

  On a CPU, compiling the whole step was measured 11x slower (the 3-D convolutions lose
  oneDNN); XLA on the layers alone pays (the warp 3.7x faster forward+backward at 128³). On a
  GPU, ``on`` is the setting to try.

>>> configure("float32", "off")
{'precision': 'float32', 'jit_compile': 'off'}
>>> configure()["jit_compile"]
'auto'
"""

from __future__ import annotations

__all__ = ["PRECISIONS", "JIT_COMPILE_CHOICES", "configure", "current", "apply_to_model",
           "built_with_precision"]

import contextlib

PRECISIONS = ("float32", "mixed_bfloat16")
JIT_COMPILE_CHOICES = ("auto", "layers", "on", "off")

_STATE = {"precision": "float32", "jit_compile": "auto"}

#: the layers' ``jit_compile`` default and Model.compile's ``jit_compile`` per choice
_LAYERS = {"auto": "auto", "layers": True, "on": False, "off": False}
_MODEL = {"auto": None, "layers": False, "on": True, "off": False}


def configure(precision: str = "float32", jit_compile: str = "auto") -> dict:
    """Set the process's precision policy and XLA use; returns the settings as a dict.

    Args:
        precision: one of :data:`PRECISIONS` (sets ``keras.mixed_precision``'s global policy,
            so call it before building models).
        jit_compile: one of :data:`JIT_COMPILE_CHOICES` (module docstring).
    Raises:
        ValueError: an unknown value (naming the option and the choices).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if jit_compile not in JIT_COMPILE_CHOICES:
        raise ValueError(f"jit_compile: {jit_compile!r} is not one of "
                         f"{', '.join(JIT_COMPILE_CHOICES)}")
    import keras

    from regseg.layers import set_layers_jit_compile

    keras.mixed_precision.set_global_policy(precision)
    set_layers_jit_compile(_LAYERS[jit_compile])
    _STATE.update(precision=precision, jit_compile=jit_compile)
    return dict(_STATE)


def current() -> dict:
    """The settings last given to :func:`configure` (``float32`` / ``auto`` before any)."""
    return dict(_STATE)


def apply_to_model(model) -> None:
    """Give a compiled Keras model the whole-step XLA setting of :func:`configure`.

    ``auto`` leaves the model's own choice; ``on`` sets ``model.jit_compile = True`` (Keras
    falls back to False, with its warning, for a model that cannot be compiled); ``layers`` and
    ``off`` set it False. Call it before ``fit`` builds the train function.
    """
    value = _MODEL[_STATE["jit_compile"]]
    if value is not None and getattr(model, "jit_compile", None) != value:
        model.jit_compile = value
        if hasattr(model, "train_function"):
            model.train_function = None  # rebuilt with the new setting


@contextlib.contextmanager
def built_with_precision(precision: str):
    """Build models inside this block under ``precision``'s policy, then restore the previous.

    For loading a trained run with the precision it was trained with (``regseg_run.json``), so
    that its predictions are the ones its tables were made from. Layers keep the policy they
    were built with.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    import keras

    previous = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
