"""Lightning layer for the `perf` area."""

__all__: list[str] = []
