"""Lightning layer for the `finetune` area."""

__all__: list[str] = []
