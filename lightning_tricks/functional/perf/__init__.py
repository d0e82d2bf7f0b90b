"""Pure-PyTorch cores for the `perf` area."""

__all__: list[str] = []
