"""Lightning layer for the `inspect` area."""

__all__: list[str] = []
