"""XLA for single layers (issue 11): a function compiled on its own, backward pass included.

On a CPU, compiling a whole training step with XLA is slow (the 3-D convolutions lose oneDNN;
measured 10-20x slower), while compiling a gather-heavy layer alone pays: the warp and the cost
volume are several times faster forward+backward.  ``tf.function(jit_compile=True)`` nested in an
uncompiled graph compiles its forward pass only (its gradient runs uncompiled, measured 2.4x
slower for the warp than compiling both), so :func:`compiled_with_gradient` joins a compiled
forward pass and a compiled vector-Jacobian product with a ``tf.custom_gradient``.

``jit_compile`` values, shared by :func:`~regseg.layers.warp` and
:func:`~regseg.layers.cost_volume`:

* ``"auto"`` (default): compile when the layer runs inside a TensorFlow graph (``Model.fit`` /
  ``predict``, ``tf.function``) and op determinism is off (as Keras' own ``"auto"``); eager
  calls run uncompiled;
* ``True``: always (TensorFlow backend), eager calls included;
* ``False``: never.

Other Keras backends ignore the setting.  :func:`set_layers_jit_compile` sets the default of
every such layer at once (the runner's ``--jit-compile``).
"""

from __future__ import annotations

from ._checks import check_option

JIT_COMPILE = ("auto", True, False)

#: process-wide default of the layers that support XLA on their own
_DEFAULT = {"jit_compile": "auto"}


def layers_jit_compile():
    """The process-wide default ``jit_compile`` of the XLA-capable layers (``"auto"``)."""
    return _DEFAULT["jit_compile"]


def set_layers_jit_compile(jit_compile):
    """Set the default ``jit_compile`` of the warp and the cost volume; returns the previous.

    Args:
        jit_compile: ``"auto"``, ``True`` or ``False`` (module docstring).
    Raises:
        ValueError: another value (naming the option).

    >>> previous = set_layers_jit_compile(False)
    >>> set_layers_jit_compile(previous)
    False
    """
    previous = _DEFAULT["jit_compile"]
    _DEFAULT["jit_compile"] = check_option("jit_compile", jit_compile, JIT_COMPILE)
    return previous


def check_jit_compile(jit_compile):
    """``jit_compile`` if it is ``None`` or one of :data:`JIT_COMPILE`, else ``ValueError``."""
    if jit_compile is not None:
        check_option("jit_compile", jit_compile, JIT_COMPILE)
    return jit_compile


def op_determinism() -> bool:
    """Whether TensorFlow op determinism is on (the private test Keras' "auto" uses too)."""
    try:
        from tensorflow.python.framework.config import is_op_determinism_enabled
    except ImportError:  # pragma: no cover - moved in some TensorFlow version: stay safe
        return True
    return bool(is_op_determinism_enabled())


def resolve_jit_compile(jit_compile) -> bool:
    """Whether to compile now: ``None`` follows :func:`layers_jit_compile`."""
    import keras
    jit_compile = _DEFAULT["jit_compile"] if jit_compile is None else jit_compile
    if keras.backend.backend() != "tensorflow" or jit_compile is False:
        return False
    if jit_compile is True:
        return True
    import tensorflow as tf
    return not tf.executing_eagerly() and not op_determinism()


_CACHE = {}


def compiled_with_gradient(key, fn, compile_forward=True):
    """``fn(*tensors) -> tensor`` with its vector-Jacobian product compiled by XLA.

    Args:
        key: hashable, caches the wrapper (one per layer option set).
        fn: a function of float tensors returning one tensor, written with ``keras.ops`` or
            TensorFlow.
        compile_forward: compile the forward pass too (``False``: run it uncompiled, for layers
            whose compiled forward pass alone is slower, e.g. the cost volume).
    Returns:
        A function of the same tensors.  Its gradient is one compiled function that recomputes
        ``fn`` under a ``GradientTape`` and returns the gradient of every input (zeros for an
        input without one); each compiled function retraces per input shape and dtype.
    """
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    import tensorflow as tf

    def vjp(upstream, *inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = fn(*inputs)
        return tape.gradient(out, list(inputs), output_gradients=upstream,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    forward = tf.function(fn, jit_compile=True, autograph=False) if compile_forward else fn
    backward = tf.function(vjp, jit_compile=True, autograph=False)

    @tf.autograph.experimental.do_not_convert
    @tf.custom_gradient
    def wrapped(*inputs):
        def grad(upstream):
            return backward(upstream, *inputs)
        return forward(*inputs), grad

    _CACHE[key] = wrapped
    return wrapped
