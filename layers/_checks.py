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
