"""Checkpoint every rank's random number generators so that a resumed run is exact.

The functional pair: [`ExactResume`][lightning_tricks.ExactResume] saves with
[`gather_rng_states`][lightning_tricks.functional.gather_rng_states] and restores with
[`restore_rng_state`][lightning_tricks.functional.restore_rng_state]
(``lightning_tricks.functional.repro.exact_resume``).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch import Callback

from lightning_tricks._compat import recreate_train_iterator
from lightning_tricks.functional.repro.exact_resume import gather_rng_states, restore_rng_state

__all__ = ["ExactResume"]


class ExactResume(Callback):
    """Saves the random number generators of every rank in each checkpoint and restores them.

    Lightning checkpoints weights, optimizer, schedulers, loops and callbacks, but not the
    generators: a resumed run draws other dropout masks, other shuffles and other loader
    worker seeds than the run it continues, so a model with dropout never resumes
    bitwise. With this callback, each checkpoint holds the state of torch's CPU and CUDA
    generators, numpy's and Python's `random`, of every rank (gathered into the
    checkpoint that global rank 0 writes); a fit resumed from it gives each rank its own
    states back when the first resumed epoch starts (``on_train_epoch_start``) and makes
    that epoch's training data iterator again from them, after the samplers' ``set_epoch``
    (Lightning makes the first iterator of a fit before both). So the first resumed batch,
    the shuffled order of a ``RandomSampler`` or ``DistributedSampler``, and the seeds of
    the loader's worker processes are the ones the uninterrupted run drew.

    The states are tensors, ints and lists (no numpy objects), so the checkpoint loads with
    ``torch.load(path, weights_only=True)``. ``state_dict()`` holds the states of the last
    checkpoint saved or loaded (empty before either).

    Exactness holds for checkpoints saved at the end of an epoch (``ModelCheckpoint``'s
    default, ``last.ckpt`` included); a checkpoint saved in the middle of an epoch restores
    the generators, but Lightning restarts that epoch's data from its beginning. A resume on
    a different number of ranks warns and restores the ranks that have a saved state.
    Persistent loader workers keep their own generators across epochs, which no checkpoint
    holds: random augmentation inside them resumes exactly only with
    ``persistent_workers=False``.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[ExactResume()], logger=False)
        >>> isinstance(trainer.callbacks[0], ExactResume)
        True
    """

    def __init__(self) -> None:
        self._ranks: list[dict[str, Any]] = []
        self._restore = False

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": list(self._ranks)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        if not isinstance(ranks, list):
            raise TypeError(
                f"ExactResume state `ranks` must be a list of RNG states; got {type(ranks).__name__}"
            )
        self._ranks = list(ranks)
        self._restore = bool(self._ranks)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Every rank takes part in saving (Lightning dumps the checkpoint on all ranks, rank 0
        # writes it): gather all ranks' states here rather than in state_dict(), which Lightning
        # calls first and which stays a cheap local read outside a checkpoint.
        self._ranks = gather_rng_states()
        callbacks = checkpoint.get("callbacks")
        if isinstance(callbacks, dict) and self.state_key in callbacks:
            callbacks[self.state_key] = self.state_dict()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_now(trainer, recreate_iterator=True)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # a fit resumed in the middle of an epoch skips on_train_epoch_start for that epoch
        self._restore_now(trainer, recreate_iterator=False)

    def _restore_now(self, trainer: L.Trainer, recreate_iterator: bool) -> None:
        if not self._restore:
            return
        self._restore = False
        rank, world = trainer.global_rank, trainer.world_size
        if len(self._ranks) != world:
            warnings.warn(
                f"ExactResume: the checkpoint holds the random number generator states of {len(self._ranks)} "
                f"rank(s), this run has {world}; "
                + (
                    f"rank {rank} restores its saved state, but the resumed run will not match the original."
                    if rank < len(self._ranks)
                    else f"rank {rank} has no saved state and keeps its own."
                ),
                stacklevel=3,
            )
        if rank >= len(self._ranks):
            return
        restore_rng_state(self._ranks[rank])
        if recreate_iterator:
            # Lightning made the first resumed epoch's data iterator before the epoch's hooks and the
            # samplers' set_epoch: make it again from the restored generators, as the run it continues did.
            recreate_train_iterator(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore = False
