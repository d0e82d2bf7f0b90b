"""Pure-PyTorch cores for the `inference` area."""

__all__: list[str] = []
