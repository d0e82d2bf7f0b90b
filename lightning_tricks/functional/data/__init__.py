"""Pure-PyTorch cores for the `data` area."""

__all__: list[str] = []
