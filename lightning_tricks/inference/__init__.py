"""Lightning layer for the `inference` area."""

__all__: list[str] = []
