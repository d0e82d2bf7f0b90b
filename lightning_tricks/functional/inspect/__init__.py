"""Pure-PyTorch cores for the `inspect` area."""

__all__: list[str] = []
