"""A model with dropout and a shuffled, augmented loader with worker processes: the setup
whose resume is exact only when every random number generator is checkpointed.

``python -m tests.helpers.zoo_exactresume OUT`` is one rank of a 2-process DDP world
(started by ``tests/repro/test_exact_resume.py``): it runs straight, stopped and resumed
fits with :class:`~lightning_tricks.ExactResume` in that one world and saves
each rank's final whole state.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from tests.helpers.data import make_image_dataset
from tests.helpers.ddp import end_process_group
from tests.helpers.models import BlockNet, ClassifierModule
from tests.helpers.utils import whole_state


class DropoutClassifier(ClassifierModule):
    """``ClassifierModule(arch="blocks")`` whose blocks use dropout."""

    def __init__(self, dropout: float = 0.1):
        super().__init__(arch="blocks", lr=0.05)
        net = BlockNet(dropout=dropout)
        self.backbone, self.head = net.backbone, net.head


class NoisyImages(Dataset):
    """Images plus noise drawn from the (worker's) torch generator: a random augmentation."""

    def __init__(self, n: int, seed: int):
        self.data = make_image_dataset(n, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 0.1 * torch.randn_like(x), y


class ShuffledWorkersData(L.LightningDataModule):
    """Shuffled training loader (``RandomSampler`` drawing from the global generator) with
    ``num_workers`` processes whose seeds derive from the main process's generator."""

    def __init__(self, num_workers: int = 2, n_train: int = 32, batch_size: int = 8):
        super().__init__()
        self.num_workers, self.n_train, self.batch_size = num_workers, n_train, batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train_set = NoisyImages(self.n_train, seed=0)
        self.val_set = make_image_dataset(16, seed=1)

    def train_dataloader(self):
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            multiprocessing_context="fork" if self.num_workers else None,
        )

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


def fit(
    root: Path,
    *,
    exact: bool,
    epochs: int,
    ckpt_path: str | None = None,
    num_workers: int = 2,
    ddp: bool = False,
    crash_at: int | None = None,
    safe: bool = False,
):
    """One fit of the dropout model; returns (trainer, whole state without the checkpointing)."""
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_tricks import ExactResume

    trainer_args: dict = {}
    if ddp:  # joins the world started outside (MASTER_ADDR, WORLD_SIZE, LOCAL_RANK set)
        trainer_args = {
            "devices": 2,
            "strategy": DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        }

    L.seed_everything(0, verbose=False)
    model = DropoutClassifier()
    if ddp:  # one weight init (DDP broadcasts rank 0's), a dropout stream of its own per rank
        L.seed_everything(1 + int(os.environ["LOCAL_RANK"]), verbose=False)
    ckpt = ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
    callbacks = [ckpt, *([ExactResume()] if exact else [])]
    if crash_at is not None:
        from tests.conformance.checks import CrashAt

        callbacks.append(CrashAt(crash_at))
    if safe:  # pickle-free checkpoints and a real fp16 loss scaler (its state must round-trip)
        from lightning.pytorch.plugins.precision import MixedPrecision

        from lightning_tricks import SafeCheckpointIO

        scaler = torch.amp.GradScaler("cpu")
        trainer_args["plugins"] = [SafeCheckpointIO(), MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(model, datamodule=ShuffledWorkersData(num_workers=num_workers), ckpt_path=ckpt_path)
    return trainer, whole_state(trainer, model, ignore_callbacks=[ckpt])


def straight_and_resumed(
    root: Path, *, exact: bool, epochs: int = 3, stop: int = 2, crash: bool = True, **fit_args
):
    """The whole state of a straight ``epochs``-epoch fit and of a fit interrupted after ``stop``
    epochs (``crash``: by an exception; else by ``max_epochs``) then resumed from its
    ``last.ckpt`` up to ``epochs``; and the path of that checkpoint."""
    from tests.conformance.checks import Interrupt

    _, straight = fit(root / "straight", exact=exact, epochs=epochs, **fit_args)
    if crash:  # a crash at the start of epoch `stop`
        with contextlib.suppress(Interrupt):
            fit(root / "stopped", exact=exact, epochs=epochs, crash_at=stop, **fit_args)
    else:  # a fit that stops after `stop` epochs
        fit(root / "stopped", exact=exact, epochs=stop, **fit_args)
    last = str(root / "stopped" / "ckpt" / "last.ckpt")
    guard: contextlib.AbstractContextManager = contextlib.nullcontext()
    if fit_args.get("safe"):
        guard = _checkpoint_reads_never_unpickle()
    with guard:
        _, resumed = fit(root / "resumed", exact=exact, epochs=epochs, ckpt_path=last, **fit_args)
    return straight, resumed, last


@contextlib.contextmanager
def _checkpoint_reads_never_unpickle():
    """Every way to unpickle raises while a rank reads the checkpoint file (under DDP, the
    ranks also exchange ExactResume's states with ``all_gather_object``, which pickles between
    processes, not from the file, so the guard covers the read rather than the whole fit)."""
    from lightning_tricks import SafeCheckpointIO
    from tests.finetune.test_safe_checkpoint_io import no_unpickling

    original = SafeCheckpointIO.load_checkpoint
    reads = []

    def guarded(self, *args, **kwargs):
        reads.append(args[0] if args else kwargs.get("path"))
        with no_unpickling():
            return original(self, *args, **kwargs)

    SafeCheckpointIO.load_checkpoint = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        SafeCheckpointIO.load_checkpoint = original  # type: ignore[method-assign]
    if not reads:
        raise AssertionError("the resumed fit never read its checkpoint through SafeCheckpointIO")


def main(out_dir: str, safe: bool = False) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    rank = int(os.environ["LOCAL_RANK"])
    straight, resumed, last = straight_and_resumed(
        out, exact=True, epochs=2, stop=1, ddp=True, num_workers=1, crash=False, safe=safe
    )
    results = {"straight": straight, "resumed": resumed, "last": last}
    torch.save(results, out / f"rank{rank}.pt")
    end_process_group()


if __name__ == "__main__":
    main(sys.argv[1], safe=sys.argv[2:] == ["safe"])
