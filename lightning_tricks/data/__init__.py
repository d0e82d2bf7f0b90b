"""Lightning layer for the `data` area."""

from lightning_tricks.data.split_datamodule import SplitDataModule

__all__: list[str] = ["SplitDataModule"]
