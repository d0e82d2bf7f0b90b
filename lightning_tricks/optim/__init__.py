"""Lightning layer for the `optim` area."""

__all__: list[str] = []
