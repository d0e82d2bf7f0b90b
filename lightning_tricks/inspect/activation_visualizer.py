"""ActivationVisualizer: feature maps, histograms and statistics of chosen layers, every N epochs."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_tricks._logging import component_dir, component_name, image_writer, log_scalars, write_png
from lightning_tricks.functional._checks import (
    check_int,
    check_number,
    check_optional_path,
    check_str_sequence,
)
from lightning_tricks.functional._io import atomic_write_text
from lightning_tricks.functional.inspect.activation_visualizer import (
    STAT_NAMES,
    activation_histogram,
    activation_stats,
    capture_activations,
    feature_dim_of,
    feature_map_grid,
    histogram_image,
    select_layers,
)

__all__ = ["ActivationVisualizer"]


def _inputs_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        return _inputs_of(batch[0])
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return value
    return None


def _head(batch: Any, n: int) -> Any:
    """A detached copy of ``batch`` with every tensor cut to its first ``n`` rows."""
    if isinstance(batch, torch.Tensor):
        return (batch[:n] if batch.dim() else batch).detach().clone()
    if isinstance(batch, Mapping):
        return {k: _head(v, n) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_head(v, n) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_head(v, n) for v in batch)
    return batch


def _last_epoch(trainer: L.Trainer) -> bool:
    """Whether the training epoch now ending is the last of the fit, as far as is known here."""
    if trainer.should_stop:
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return max_epochs is not None and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs


class ActivationVisualizer(Callback):
    """Log what chosen layers output on a fixed sample batch, every N epochs and at the end of fit.

    The sample batch is taken once (the first validation batch, else the first training
    batch, unless given with [`set_sample`][lightning_tricks.ActivationVisualizer.set_sample]), cut to ``num_samples`` rows. A capture
    runs the model on it in eval mode without gradients, with forward hooks that exist
    only during the capture, and leaves weights, train/eval flags and the global RNG
    untouched. Global rank 0 captures and sends the result (history, ranges, statistics)
    to the other ranks, so every rank holds the same state and logs the same values.

    The sample is replayed the way training steps usually call the model: a dict batch
    as ``pl_module(**batch)`` when ``forward`` takes those keywords (the HuggingFace
    habit), an ``(x, y)`` batch as ``pl_module(x)``, a tensor as ``pl_module(batch)``.
    A module that needs something else defines ``activation_forward(self, batch)``, which
    the callback then calls instead. If a capture fails, the callback warns once, naming
    the error, and stops capturing; training goes on.

    Statistics are per unit: a unit is a channel of a conv feature map ``(B, C, H, W)``
    and a feature of a token sequence ``(B, T, F)`` or a vector ``(B, F)`` (the module
    type decides: `feature_dim_of`).
    A unit is dead when it is near zero for every sample and position. Sequences are
    drawn as a tokens x features heat map per sample.

    Each layer's statistics ``mean``, ``std``, ``near_zero_fraction`` and
    ``dead_fraction`` are logged through ``LightningModule.log`` (every logger sees them,
    CSVLogger included) as ``activation_visualizer/<layer>/<stat>``, at the end of the
    training epoch that captured them. With a TensorBoard logger each layer also gets,
    under ``activation_visualizer/<layer>/``: an image grid of its first feature maps
    (``feature_maps``), a ``histogram``, and a ``colorful_dimension`` image (its
    histogram over time, fastai style). Without one (CSVLogger, no logger) the images are
    PNG files and the statistics also a CSV file under ``dirpath``.

    The last capture of a fit runs at the end of its last training epoch. Should a fit
    end where that is not known (e.g. stopped by another callback after the epoch-end
    hooks), a final capture runs in ``on_fit_end``, where ``LightningModule.log`` is not
    allowed: its statistics are in `last_stats`, its images written, but no scalar
    is logged.

    Args:
        every_n_epochs: capture after every N-th training epoch (and always after the last one).
        layers: modules to capture, by the library's naming rule (qualified names,
            segment-wise globs, class names such as ``"Conv2d"``; a lone string is one
            name); by default the Conv2d layers, or the Linear layers of a model without
            convolutions.
        max_layers: at most this many layers.
        num_samples: rows of the sample batch used.
        max_channels: feature maps shown per layer.
        bins: histogram bins (the range is fixed per layer at its first capture).
        near_zero: absolute value below which an activation counts as zero.
        dirpath: where PNG and CSV files go when no logger takes images; by default
            ``<log_dir>/activation_visualizer/``.

    Raises:
        ValueError: for arguments out of range.
        TypeError: for ``layers`` that are not names.

    Example:
        >>> from lightning_tricks import ActivationVisualizer
        >>> cb = ActivationVisualizer(every_n_epochs=2, layers=["backbone.*"], max_layers=4)
        >>> cb.every_n_epochs
        2
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: Sequence[str] | str | None = None,
        max_layers: int = 8,
        num_samples: int = 8,
        max_channels: int = 16,
        bins: int = 40,
        near_zero: float = 1e-3,
        dirpath: str | None = None,
    ) -> None:
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.layers = None if layers is None else check_str_sequence("layers", layers)
        self.max_layers = check_int("max_layers", max_layers, minimum=1)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.max_channels = check_int("max_channels", max_channels, minimum=1)
        self.bins = check_int("bins", bins, minimum=2, maximum=10_000)
        self.near_zero = check_number("near_zero", near_zero, minimum=0.0)
        self.dirpath = check_optional_path("dirpath", dirpath)
        self._user_sample: Any = None
        self._reset()

    def _reset(self) -> None:
        self.sample: Any = self._user_sample
        self.history: dict[str, list[list[float]]] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.last_stats: dict[str, dict[str, float]] = {}
        self._layer_names: list[str] = []
        self._captured_step: int | None = None
        self._told_where = False
        self._failed = False
        self._out_dir = Path(component_name(self))

    @property
    def state_key(self) -> str:
        return f"ActivationVisualizer[layers={self.layers},bins={self.bins}]"

    def set_sample(self, batch: Any) -> None:
        """Use ``batch`` as the sample: a tensor, or a whole batch as the loader yields it
        (``(x, y)``, a dict), replayed the way the class docstring describes.

        Raises:
            TypeError: if ``batch`` holds no tensor.

        Example:
            >>> import torch
            >>> cb = ActivationVisualizer(num_samples=2)
            >>> cb.set_sample((torch.zeros(5, 3), torch.zeros(5)))
            >>> tuple(cb.sample[0].shape), tuple(cb.sample[1].shape)
            ((2, 3), (2,))
        """
        if _inputs_of(batch) is None:
            raise TypeError(f"`batch` must be a tensor or hold one; got {type(batch).__name__}")
        self._user_sample = _head(batch, self.num_samples)
        self.sample = self._user_sample

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self._layer_names = select_layers(pl_module, self.layers, self.max_layers)
        if not self._layer_names:
            rank_zero_warn("ActivationVisualizer: the model has no Conv2d or Linear layer; pass `layers`.")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # `trainer.log_dir` is a collective under DDP: resolve it here, on every rank
        self._out_dir = component_dir(trainer, self, self.dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or _last_epoch(trainer):
            self._capture(trainer, pl_module, log=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._capture(trainer, pl_module, log=False)  # `LightningModule.log` is not allowed here

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "ranges": self.ranges}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [list(r) for r in v] for k, v in state_dict.get("history", {}).items()}
        self.ranges = {k: tuple(v) for k, v in state_dict.get("ranges", {}).items()}

    # ---------------------------------------------------------------- capture
    def _take_sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        loaders: list[Any] = []
        datamodule = getattr(trainer, "datamodule", None)  # set by `trainer.fit(datamodule=...)`
        for source in (trainer.val_dataloaders, datamodule, pl_module, trainer.train_dataloader):
            if source is None:
                continue
            if isinstance(source, (L.LightningDataModule, L.LightningModule)):
                try:
                    source = source.val_dataloader()
                except (MisconfigurationException, NotImplementedError):  # no validation loader defined
                    continue
                except Exception as err:
                    self._probe_failed(f"`{type(source).__name__}.val_dataloader()`", err)
                    continue
            loaders.extend(source if isinstance(source, (list, tuple)) else [source])
        for loader in loaders:
            # iter() draws the loader's base seed from the global generator: both calls run in a
            # forked generator, so taking the sample leaves the training's random stream alone
            with torch.random.fork_rng(devices=[]):
                try:
                    batches = iter(loader)
                except TypeError:  # not a loader
                    continue
                try:
                    batch = next(batches)
                except StopIteration:  # an empty loader
                    continue
                except Exception as err:
                    self._probe_failed(f"the first batch of {type(loader).__name__}", err)
                    continue
            if _inputs_of(batch) is not None:
                return _head(batch, self.num_samples)
        return None

    def _probe_failed(self, what: str, err: Exception) -> None:
        rank_zero_warn(
            f"ActivationVisualizer: taking a sample batch from {what} raised {type(err).__name__}: {err}; "
            f"trying the next source (call `set_sample(batch)` to choose the sample yourself)."
        )

    def _capture(self, trainer: L.Trainer, pl_module: L.LightningModule, *, log: bool) -> None:
        """Rank 0 captures; every rank then holds its result and logs the same scalars."""
        if not self._layer_names or self._captured_step == trainer.global_step:
            return
        self._captured_step = trainer.global_step
        names: list[str] = []
        if trainer.is_global_zero and not self._failed:
            names = self._capture_here(trainer, pl_module)
        shared = (names, self.history, self.ranges, self.last_stats, self._failed, self._layer_names)
        names, self.history, self.ranges, self.last_stats, self._failed, self._layer_names = (
            trainer.strategy.broadcast(shared, src=0)
        )
        if log and names:
            stats = {f"{n}/{k}": v for n in names for k, v in self.last_stats[n].items()}
            log_scalars(pl_module, self, stats, on_step=False, on_epoch=True)

    def _capture_here(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        """Capture on this process; the names of the layers captured."""
        if self.sample is None:
            self.sample = self._take_sample(trainer, pl_module)
            if self.sample is None:
                rank_zero_warn("ActivationVisualizer found no sample batch; call `set_sample(batch)`.")
                self._layer_names = []
                return []
        try:
            acts = self._run(trainer, pl_module)
        except Exception as err:  # a side activity must never stop training
            self._failed = True
            rank_zero_warn(
                f"ActivationVisualizer: capturing activations failed with {type(err).__name__}: {err}. "
                f"No more captures in this fit; training goes on. Define `activation_forward(self, batch)` "
                f"on your LightningModule to tell it how to run the model on a batch."
            )
            return []
        if not acts:
            return []
        modules = dict(pl_module.named_modules())
        dims = {n: feature_dim_of(modules.get(n), a) for n, a in acts.items()}
        names = [n for n in self._layer_names if n in acts]
        for n in names:
            if n not in self.ranges:
                a = acts[n].float()
                lo, hi = float(a.min()), float(a.max())
                if hi - lo < 1e-6:
                    lo, hi = lo - 0.5, hi + 0.5
                self.ranges[n] = (lo, hi)
        # all per-layer numbers go to the host in one transfer
        stats = torch.stack([activation_stats(acts[n], self.near_zero, dims[n]) for n in names]).cpu()
        hists = torch.stack([activation_histogram(acts[n], self.bins, *self.ranges[n]) for n in names]).cpu()
        step, epoch = trainer.global_step, trainer.current_epoch
        for i, n in enumerate(names):
            self.history.setdefault(n, []).append(hists[i].tolist())
            self.last_stats[n] = dict(zip(STAT_NAMES, stats[i].tolist()))
        writer = image_writer(trainer)
        if writer is not None:
            for n in names:
                tag = f"{component_name(self)}/{n}"
                writer.add_image(
                    f"{tag}/feature_maps",
                    feature_map_grid(acts[n], self.max_channels, feature_dim=dims[n]),
                    step,
                )
                writer.add_histogram(f"{tag}/histogram", acts[n].float().cpu(), step)
                writer.add_image(
                    f"{tag}/colorful_dimension", histogram_image(torch.tensor(self.history[n])), step
                )
            writer.flush()
        else:
            self._write_files(acts, names, epoch, step, dims)
        return names

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        sample = move_data_to_device(self.sample, pl_module.device)
        forward_fn = getattr(pl_module, "activation_forward", None)
        return capture_activations(
            pl_module,
            sample,
            self._layer_names,
            trainer.precision_plugin.forward_context,
            forward_fn=forward_fn if callable(forward_fn) else None,
        )

    def _write_files(
        self, acts: dict[str, torch.Tensor], names: list[str], epoch: int, step: int, dims: dict[str, int]
    ) -> None:
        root = self._out_dir
        for n in names:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", n)
            write_png(
                root / f"epoch{epoch:03d}_step{step:06d}" / f"{safe}.png",
                feature_map_grid(acts[n], self.max_channels, feature_dim=dims[n]),
            )
            write_png(root / f"{safe}_colorful_dimension.png", histogram_image(torch.tensor(self.history[n])))
        path = root / "activation_stats.csv"
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not old:
            w.writerow(["epoch", "step", "layer", *STAT_NAMES])
        for n in names:
            w.writerow([epoch, step, n, *(f"{v:.6g}" for v in self.last_stats[n].values())])
        atomic_write_text(path, old + buf.getvalue())
        if not self._told_where:
            self._told_where = True
            rank_zero_warn(
                f"ActivationVisualizer: no logger takes images, so feature maps (PNG) and statistics "
                f"(activation_stats.csv) are written to {root}"
            )
