"""Pure-PyTorch cores for the `repro` area."""

__all__: list[str] = []
