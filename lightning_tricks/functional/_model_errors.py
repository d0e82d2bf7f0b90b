"""Errors a user's model raises on the input a functional core gave it, re-raised naming the arguments.

``capture_activations``, ``extract_features``, ``tta_predict``, ``grad_cam`` and
``visualize_filters`` run the caller's model on the caller's input. When torch refuses
that input inside the forward (``"Expected 3D (unbatched) or 4D (batched) input to
conv2d"``, ``"Input type (long int) and bias type (float) should be the same"``), the error
names no argument; `model_errors` adds which model and which input it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["model_errors"]


@contextlib.contextmanager
def model_errors(what: str) -> Iterator[None]:
    """Re-raise what the model raises inside the block with ``what`` in front.

    A plain ``RuntimeError`` (the shape, dtype and device mismatches torch finds in a
    forward) becomes a ``ValueError``, a plain ``TypeError`` stays a ``TypeError``; the
    original is chained as ``__cause__``. Subclasses (the model's own exception classes,
    out-of-memory and accelerator errors, ``NotImplementedError``), errors whose message
    already names an argument (in backticks, as the library's own checks do) and every
    other exception pass through unchanged, so a caller can still catch what its model raises.

    Args:
        what: the call, naming the arguments, e.g. ``"running `model` on `x` of shape (2, 3)"``.

    Example:
        >>> import torch
        >>> with model_errors("running `model` on `x`"):
        ...     torch.nn.Linear(2, 2)(torch.zeros(3))
        Traceback (most recent call last):
        ...
        ValueError: running `model` on `x` raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 2x2)
    """
    try:
        yield
    except (RuntimeError, TypeError) as err:
        message = str(err)
        if type(err) not in (RuntimeError, TypeError) or "`" in message:
            raise
        first = message.strip().splitlines()[0] if message.strip() else ""
        new = TypeError if isinstance(err, TypeError) else ValueError
        raise new(f"{what} raised {type(err).__name__}: {first}") from err
