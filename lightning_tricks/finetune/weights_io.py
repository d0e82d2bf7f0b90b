"""Lightning layer of weights I/O: ``ExportWeights`` writes the final or best weights at the end of fit.

The documented pair: [`ExportWeights`][lightning_tricks.ExportWeights] (callback) <->
[`save_weights`][lightning_tricks.functional.save_weights] (its functional entry point, in
`lightning_tricks.functional.finetune.weights_io`, with ``read_weights`` and
``load_weights`` to read the file back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_tricks._logging import component_dir
from lightning_tricks.functional._checks import check_choice, check_str
from lightning_tricks.functional._modules import resolve_modules
from lightning_tricks.functional.finetune.weights_io import read_checkpoint, save_weights

__all__ = ["ExportWeights"]


class ExportWeights(Callback):
    """At the end of ``fit``, write the model's weights to a ``.safetensors`` file.

    The file holds tensors only (loadable without unpickling, by any framework that
    reads safetensors) and is written on global rank 0, atomically. With
    ``source="best"`` the weights come from the ``ModelCheckpoint``'s best checkpoint
    (read weights-only) rather than the last step; if no best checkpoint exists when
    fit ends, the final weights are written with a warning.

    The file's metadata records ``source`` (``"final"`` or ``"best:<checkpoint name>"``)
    and the ``epoch`` and ``global_step`` the weights come from: for ``"best"`` those
    stored in the checkpoint, for ``"final"`` the last epoch that ran (0-based) and the
    final step; the numbers Lightning puts in a checkpoint name such as
    ``epoch=2-step=60.ckpt``.

    Args:
        dirpath: output folder; ``None`` for ``<log_dir>/export_weights/`` (the trainer's
            ``log_dir``, or ``default_root_dir`` without a logger).
        filename: file name, ending in ``.safetensors``.
        source: ``"final"`` (the weights at the end of fit) or ``"best"``.
        submodule: export only this submodule of the LightningModule (e.g. ``"model"``),
            with its prefix removed; named by the naming rule (a qualified name, a segment
            glob such as ``"**.backbone"``, or a class name), which must select exactly one
            submodule; ``None`` for the whole module.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad value.
        MisconfigurationException: in ``setup``, ``source="best"`` without a
            ``ModelCheckpoint``, or ``submodule`` selecting no submodule (with near-name
            suggestions) or more than one.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import load_file
        >>> from lightning_tricks.demos import ClassifierModule, ImageDataModule, cpu_trainer
        >>> d = tempfile.mkdtemp()
        >>> cb = ExportWeights(dirpath=d, submodule="head")
        >>> cpu_trainer(max_epochs=1, callbacks=[cb]).fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule())
        >>> sorted(load_file(f"{d}/weights.safetensors"))
        ['bias', 'weight']
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "weights.safetensors",
        source: Literal["final", "best"] = "final",
        submodule: str | None = None,
    ) -> None:
        if dirpath is not None:
            check_str("dirpath", dirpath)
        check_str("filename", filename)
        if not filename.endswith(".safetensors") or os.sep in filename or filename == ".safetensors":
            raise ValueError(f"`filename` must be a file name ending in '.safetensors'; got {filename!r}")
        check_choice("source", source, ("final", "best"))
        if submodule is not None:
            check_str("submodule", submodule)
        self.dirpath = dirpath
        self.filename = filename
        self.source = source
        self.submodule = submodule
        self.last_path: str | None = None
        self._last_epoch: int | None = None
        self._prefix: str | None = None  # qualified name of the resolved submodule

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._prefix = None
        if self.submodule is not None:
            try:
                found = resolve_modules(pl_module, self.submodule, "submodule")
            except ValueError as err:
                raise MisconfigurationException(str(err)) from None
            if len(found) != 1:
                raise MisconfigurationException(
                    f"`submodule` must select exactly one submodule of {type(pl_module).__name__}; "
                    f"{self.submodule!r} selects {len(found)}: {', '.join(list(found)[:8])}"
                )
            self._prefix = next(iter(found))
        if self.source == "best" and trainer.checkpoint_callback is None:
            raise MisconfigurationException(
                "`source='best'` needs a ModelCheckpoint callback (and `enable_checkpointing=True`); "
                "use source='final' or add one"
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._last_epoch = None
        self._check(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the epoch that just ended, before Lightning counts it as completed: the number
        # that ModelCheckpoint writes into its file names ("epoch=2-step=60.ckpt")
        self._last_epoch = trainer.current_epoch

    def _state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, dict[str, str]]:
        """The tensors to write and the metadata describing where they come from."""
        if self.source == "best":
            ckpt = trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
            if best and Path(best).is_file():
                state, info = read_checkpoint(best)
                if self._prefix is not None:
                    p = self._prefix + "."
                    state = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
                meta = {"source": f"best:{Path(best).name}"}
                meta.update({k: str(info[k]) for k in ("epoch", "global_step") if k in info})
                return state, meta
            rank_zero_warn(
                "ExportWeights(source='best'): no best checkpoint was saved; exporting the final weights"
            )
        module = pl_module if self._prefix is None else pl_module.get_submodule(self._prefix)
        # no epoch ended in this fit (e.g. resumed after its last epoch): the last completed one
        epoch = self._last_epoch if self._last_epoch is not None else max(trainer.current_epoch - 1, 0)
        meta = {"source": "final", "epoch": str(epoch), "global_step": str(trainer.global_step)}
        return module.state_dict(), meta

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = component_dir(trainer, self, self.dirpath) / self.filename
        if trainer.is_global_zero:
            state, metadata = self._state(trainer, pl_module)
            save_weights(state, path, metadata=metadata)
            rank_zero_info(f"ExportWeights: wrote {len(state)} tensors ({metadata['source']}) to {path}")
        self.last_path = str(path)
        trainer.strategy.barrier("ExportWeights")
