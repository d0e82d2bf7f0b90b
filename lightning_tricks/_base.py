"""Base classes shared by the Lightning layer."""

from __future__ import annotations

__all__ = ["LightningMixin"]


class LightningMixin:
    """Marker base class of every lightning-tricks ``LightningModule`` mixin.

    A mixin is listed *before* the user's ``LightningModule`` base in the class
    statement, takes no constructor arguments of its own, and is configured through
    class attributes (which a subclass or ``__init__`` may override). Keeping mixins
    free of constructor arguments means they never fight the user's ``__init__``
    signature, ``save_hyperparameters()`` or LightningCLI.

    Example:
        >>> import lightning as L
        >>> class MyMixin(LightningMixin):
        ...     my_option = 1
        >>> class Model(MyMixin, L.LightningModule):
        ...     pass
        >>> Model().my_option
        1
    """
