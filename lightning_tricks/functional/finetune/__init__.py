"""Pure-PyTorch cores for the `finetune` area."""

__all__: list[str] = []
