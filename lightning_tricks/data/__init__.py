"""Lightning layer for the `data` area."""

__all__: list[str] = []
