"""Lightning layer for the `repro` area."""

__all__: list[str] = []
