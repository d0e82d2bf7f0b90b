"""LightningCLI example: the digits model and ``SplitDataModule``, callbacks attached from YAML.

Every lightning-tricks callback takes plain, typed arguments, so a YAML file can attach
it with ``class_path`` / ``init_args``. From the repository root::

    python -m examples.cli.main fit --config examples/cli/configs/digits.yaml
    python -m examples.cli.main fit --config examples/cli/configs/digits.yaml --trainer.max_epochs=2
    python -m examples.cli.main fit --config examples/cli/configs/digits.yaml \\
        --config examples/cli/configs/gpu_ddp.yaml          # 2 GPUs, DDP, 16-mixed
    python -m examples.cli.main fit --print_config --config examples/cli/configs/digits.yaml
"""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningCLI

from examples.digits.common import DigitsClassifier
from lightning_tricks import SplitDataModule


def main(args: ArgsType = None) -> LightningCLI:
    """Run the CLI (``args`` as on the command line; ``None`` reads ``sys.argv``)."""
    return LightningCLI(
        DigitsClassifier,
        SplitDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
