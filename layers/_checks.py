"""The one place where ``regseg.layers`` validates option values.

Every layer, loss and builder of the package that takes a string option
(``interpolation``, ``padding``, ``downsample``, ``penalty``...) checks it with
:func:`check_option`, so that a wrong value always fails the same way: a
``ValueError`` whose message names the option, lists the allowed values and
repeats the value received.
"""

from __future__ import annotations


def check_option(name, value, allowed):
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError``.

    Args:
        name: the option's name as the caller spells it (e.g. ``"padding"``);
            it starts the error message.
        value: the value received.
        allowed: tuple of the accepted values (strings, possibly ``None``);
            compared with ``==``.
    Returns:
        ``value``, unchanged.
    Raises:
        ValueError: ``"<name> must be one of <allowed>, got <value!r>"``.

    >>> check_option("padding", "zeros", ("border", "zeros"))
    'zeros'
    """
    allowed = tuple(allowed)
    # isinstance first: never compares an array or other odd object with ``==``
    if not any(value is a or (isinstance(value, type(a)) and value == a) for a in allowed):
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# ------------------------------------------------------------------------------ tensor inputs
#
# Shared by the spatial transformer, the sampling grids, the affine composition and the cost
# volume, so that a wrong input fails the same way everywhere: a ``ValueError`` at call time
# whose message starts with the function or layer (``where``) and shows the offending shapes.
#
# Static shapes are checked whenever they are known (eager tensors, numpy arrays, Keras inputs
# with a fixed batch size).  A dimension that is only known when the graph runs (e.g. the batch
# axis ``None`` of ``keras.Input`` inside ``Model.fit`` or a ``tf.function`` with a ``None`` input
# signature) cannot be checked in Python: on the TensorFlow backend a graph assertion is added
# instead, which raises ``tf.errors.InvalidArgumentError`` carrying the same message when the
# graph runs (XLA-compiled functions, ``jit_compile=True``, drop assertions); symbolic
# ``KerasTensor``s (model building) are never checked beyond their static shapes.

def _shape(x) -> tuple:
    return tuple(None if d is None else int(d) for d in x.shape)


def _backend() -> str:
    import keras
    return keras.backend.backend()


def is_concrete(x) -> bool:
    """Whether ``x`` holds values now (numpy, eager tensor), not a symbolic / traced tensor."""
    import keras
    if isinstance(x, keras.KerasTensor):
        return False
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return not tf.is_symbolic_tensor(x)
    if backend == "jax":
        import jax
        return not isinstance(x, jax.core.Tracer)
    return True


def _tf_graph_tensor(x) -> bool:
    if _backend() != "tensorflow" or not hasattr(x, "shape"):
        return False
    import keras
    import tensorflow as tf
    return not isinstance(x, keras.KerasTensor) and tf.is_symbolic_tensor(x)


def _in_xla() -> bool:
    try:  # private TensorFlow API; without it the warning is merely not given
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
    except Exception:  # noqa: BLE001
        return False


def _graph_assert(condition, message, tensor, *data):
    """``tensor`` with a TensorFlow assertion of ``condition`` attached (graph mode only)."""
    import tensorflow as tf
    check = tf.debugging.Assert(condition, [message, *data], summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def check_rank(where: str, name: str, x, expected: str, ok) -> None:
    """Raise ``ValueError`` unless ``ok(rank)``; ``expected`` describes the layout wanted."""
    rank = len(x.shape)
    if not ok(rank):
        raise ValueError(f"{where}: {name} must be {expected}, got shape {_shape(x)} (rank {rank})")


def float_input(where: str, name: str, x):
    """Apply the package's dtype rule to a tensor that is interpolated or summed.

    Float tensors (float16, bfloat16, float32, float64) are returned unchanged; integer and bool
    tensors are cast to float32 (a uint8/int16 image, a label map, an integer grid); any other
    dtype (string, complex) raises ``ValueError`` naming ``where``, ``name`` and the dtype.
    """
    import keras
    from keras import ops
    try:
        dtype = keras.backend.standardize_dtype(x.dtype)
    except (ValueError, TypeError, AttributeError):  # numpy strings or objects: refused below
        dtype = str(getattr(x, "dtype", type(x).__name__))
    else:
        if keras.backend.is_float_dtype(dtype):
            return x
        if keras.backend.is_int_dtype(dtype) or dtype == "bool":
            return ops.cast(x, "float32")
    raise ValueError(f"{where}: {name} must be a real-valued (float, integer or bool) tensor, got "
                     f"dtype {dtype} (shape {_shape(x)})")


def check_batch(where: str, **tensors) -> list:
    """Check that the named tensors share their batch size (axis 0); return them.

    Known batch sizes are compared now (``ValueError`` listing every shape).  If a batch size is
    only known when a TensorFlow graph runs, the first tensor is returned with a graph assertion
    attached (``tf.errors.InvalidArgumentError``, same message, at run time).
    """
    names, values = list(tensors), list(tensors.values())
    shapes = {n: _shape(v) for n, v in tensors.items()}
    listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
    message = f"{where}: the batch sizes (axis 0) differ: {listed}"
    known = {s[0] for s in shapes.values() if s[0] is not None}
    if len(known) > 1:
        raise ValueError(message)
    if all(s[0] is not None for s in shapes.values()):
        return values
    graph = [v for v in values if _tf_graph_tensor(v)]
    if graph and not _in_xla():
        import tensorflow as tf
        sizes = tf.stack([tf.shape(tf.convert_to_tensor(v))[0] for v in values])
        same = tf.reduce_all(tf.equal(sizes, sizes[0]))
        values[0] = _graph_assert(same, message + " (batch sizes at run time:", values[0],
                                  sizes, ")")
    return values


def check_finite(where: str, name: str, x):
    """Raise if ``x`` holds NaN or ±Inf (the ``check_finite=True`` option); return ``x``.

    Concrete values: ``ValueError`` with the counts and the first bad index.  TensorFlow graph
    tensors (``tf.function``, ``Model.fit``/``predict``): a graph assertion, raising
    ``tf.errors.InvalidArgumentError`` with the same kind of message when the graph runs; under
    XLA (``jit_compile=True``) TensorFlow drops assertions, so a warning says the check is off.
    Symbolic Keras tensors and traced JAX values: not checked (no values yet).
    """
    from keras import ops
    message = f"{where}: {name} contains NaN or infinite values (check_finite=True)"
    if is_concrete(x):
        if bool(ops.convert_to_numpy(ops.all(ops.isfinite(x)))):
            return x
        import numpy as np
        values = ops.convert_to_numpy(x)
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise ValueError(f"{message}: {int(np.isnan(values).sum())} NaN and "
                         f"{int(np.isinf(values).sum())} infinite of {values.size} values, the "
                         f"first at index {first} (shape {values.shape})")
    if _tf_graph_tensor(x):
        if _in_xla():
            import warnings
            warnings.warn(f"{where}: check_finite=True has no effect in an XLA-compiled function "
                          f"(jit_compile=True): TensorFlow drops assertions there", stacklevel=3)
            return x
        import tensorflow as tf
        finite = tf.math.is_finite(x)
        return _graph_assert(tf.reduce_all(finite), message + "; non-finite values:", x,
                             tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int64)))
    return x


# ------------------------------------------------------------------------------ mixed precision
#
# Under ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` (or ``"mixed_float16"``)
# every layer computes in 16 bits unless told otherwise, and Keras casts its float inputs to that
# dtype.  A bfloat16 sampling coordinate has 8 significant bits (a step of 1 voxel at 128-255),
# and losses summed over a volume in 16 bits lose the small terms, so the layers that handle
# coordinates, displacements and loss terms compute in float32: the convolutions stay in 16 bits.

_HALF_DTYPES = ("float16", "bfloat16")


def compute_float(x):
    """``x`` as a tensor, float16 / bfloat16 cast to float32 (other dtypes unchanged).

    The losses and regularisers of ``regseg.layers`` call it on their inputs, so that they
    compute in float32 whatever the mixed-precision policy of the layers feeding them.
    """
    import keras
    from keras import ops
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) in _HALF_DTYPES:
        return ops.cast(x, "float32")
    return x


class Float32UnderMixedPrecision:
    """Mixin for Keras layers that must compute in float32 under a 16-bit global policy.

    ``class L(Float32UnderMixedPrecision, keras.layers.Layer)``: when the layer is built without
    a ``dtype`` while the global policy computes in float16 or bfloat16 (``mixed_bfloat16``,
    ``mixed_float16``, ``bfloat16``...), its policy is ``"float32"``: Keras casts its inputs to
    float32 and its outputs are float32.  Under the default ``"float32"`` policy (or a
    ``"float64"`` one) nothing changes.  The policy is saved in the layer's config, so a model
    saved under mixed precision reloads with the same float32 layers.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("dtype") is None:
            import keras
            if keras.config.dtype_policy().compute_dtype in _HALF_DTYPES:
                kwargs["dtype"] = "float32"
        super().__init__(*args, **kwargs)
