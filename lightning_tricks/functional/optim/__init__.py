"""Pure-PyTorch cores for the `optim` area."""

__all__: list[str] = []
