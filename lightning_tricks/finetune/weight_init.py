"""``WeightInit``: initialise the model's weights with a named scheme before training.

Lightning layer of [`init_weights`][lightning_tricks.functional.init_weights] (the pair
``WeightInit`` <-> ``init_weights``, both in ``weight_init`` modules).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_tricks.functional._checks import check_bool, check_optional_int, check_str_sequence
from lightning_tricks.functional._modules import name_entries
from lightning_tricks.functional.finetune.weight_init import (
    InitReport,
    InitScheme,
    Mode,
    Nonlinearity,
    Scheme,
    frozen_roots,
    init_weights,
)

__all__ = ["WeightInit"]


class WeightInit(Callback):
    """Initialise the LightningModule's weights in ``setup``, before DDP wraps the model.

    Runs [`init_weights`][lightning_tricks.functional.init_weights] once per ``fit`` with a
    private generator seeded from ``seed``, so every rank draws the same numbers and the
    global random streams (dropout masks, shuffles) are exactly as in a run without this
    callback, on every rank. With ``seed=None`` rank 0 derives a seed from the global
    torch RNG state without advancing it (so ``seed_everything`` still makes the run
    reproducible) and broadcasts it. Tensors filled by
    [`load_weights`][lightning_tricks.functional.load_weights] are left alone, and so are
    parameters that are frozen (``requires_grad=False``) at ``setup``, such as a
    backbone loaded with ``from_pretrained`` and frozen; only the rest (e.g. a new head)
    is initialised, and the frozen ones are named in the log. It never re-initialises a model it already initialised
    (a second ``fit`` of the same module), nor when ``trainer.ckpt_path`` is set; with
    ``trainer.fit(ckpt_path=...)`` Lightning restores the checkpoint's weights after
    ``setup``, replacing the initialisation, so a resumed run continues from the
    checkpoint exactly. The weights do not depend on the parameters' memory format, so
    ``ChannelsLast`` may come before or after this callback. The report is logged (at
    INFO level, on rank 0) and kept in `report`.

    Args:
        scheme: ``"normal"``, ``"uniform"``, ``"xavier_normal"``, ``"xavier_uniform"``,
            ``"kaiming_normal"``, ``"kaiming_uniform"``, ``"orthogonal"`` or ``"trunc_normal"``.
        include: submodules to initialise, with everything inside them, by the naming
            rule: names, segment globs (``"head"``, ``"**.attn"``), class names
            (``"Conv2d"``); a lone string is one name; ``None`` for the whole model.
        exclude: submodules to leave alone, by the same rule.
        types: layer class names that get ``scheme``; ``None`` for the usual ones
            (Linear, Conv, Embedding, MultiheadAttention).
        mode: kaiming ``"fan_in"`` or ``"fan_out"``.
        nonlinearity: kaiming gain's nonlinearity (``"relu"``, ``"leaky_relu"``, ``"tanh"``, ...).
        negative_slope: leaky-ReLU slope for kaiming.
        gain: xavier/orthogonal gain.
        std: standard deviation of ``normal``/``trunc_normal``.
        bound: half-width of ``uniform``.
        init_norm: normalisation layers to weight 1, bias 0.
        zero_bias: biases of the selected layers to 0.
        zero_init_last_bn: zero the last BatchNorm weight of each residual block.
        skip_pretrained: leave tensors loaded with ``load_weights`` alone.
        include_frozen: also initialise parameters that are frozen (``requires_grad=False``)
            at ``setup``, or that another callback freezes in its ``setup`` (such as
            [`FreezeBackbone`][lightning_tricks.FreezeBackbone], listed before or after this one); by
            default they keep their weights.
        seed: seed of the initialisation; ``None`` to derive one on rank 0 from the global
            torch RNG state (without consuming it) and broadcast it.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range; in ``setup``, an ``include``/``exclude`` entry
            that selects no submodule (with near-name suggestions).

    Example:
        >>> from lightning_tricks.demos import ClassifierModule, ImageDataModule, cpu_trainer
        >>> cb = WeightInit("trunc_normal", include=["head"], std=0.01)
        >>> trainer = cpu_trainer(max_epochs=1, callbacks=[cb])
        >>> trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule())
        >>> sorted(cb.report.initialized)
        ['head.bias', 'head.weight']
    """

    def __init__(
        self,
        scheme: Scheme = "kaiming_normal",
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str = (),
        types: Sequence[str] | None = None,
        mode: Mode = "fan_in",
        nonlinearity: Nonlinearity = "relu",
        negative_slope: float = 0.0,
        gain: float = 1.0,
        std: float = 0.02,
        bound: float = 0.05,
        init_norm: bool = True,
        zero_bias: bool = True,
        zero_init_last_bn: bool = False,
        skip_pretrained: bool = True,
        seed: int | None = 0,
        include_frozen: bool = False,
    ) -> None:
        drawn = InitScheme(scheme, mode, nonlinearity, negative_slope, gain, std, bound)
        # the keyword arguments of init_weights, validated
        self.options: dict[str, Any] = {
            "scheme": drawn.scheme,
            "include": None if include is None else name_entries("include", include),
            "exclude": name_entries("exclude", exclude, allow_empty=True),
            "types": None if types is None else check_str_sequence("types", types),
            "mode": drawn.mode,
            "nonlinearity": drawn.nonlinearity,
            "negative_slope": drawn.negative_slope,
            "gain": drawn.gain,
            "std": drawn.std,
            "bound": drawn.bound,
            "init_norm": check_bool("init_norm", init_norm),
            "zero_bias": check_bool("zero_bias", zero_bias),
            "zero_init_last_bn": check_bool("zero_init_last_bn", zero_init_last_bn),
        }
        self.skip_pretrained = check_bool("skip_pretrained", skip_pretrained)
        self.seed = check_optional_int("seed", seed, minimum=0)
        self.include_frozen = check_bool("include_frozen", include_frozen)
        self.report: InitReport | None = None
        self._done: Any = None  # weakref to the last module initialised

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_done"] = None
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.ckpt_path:
            rank_zero_info(f"WeightInit: resuming from {trainer.ckpt_path}; weights are not re-initialised")
            return
        if self._done is not None and self._done() is pl_module:
            rank_zero_info("WeightInit: this module was already initialised by this callback; left as is")
            return
        seed = self.seed
        if seed is None:
            seed = _seed_from_global_rng() if trainer.is_global_zero else 0
            seed = trainer.strategy.broadcast(seed, src=0)
        generator = torch.Generator().manual_seed(seed)
        opts = dict(self.options)
        # what other callbacks freeze in their own setup counts as frozen too, also when they are
        # listed after this one: the order of the callbacks does not matter
        later = [] if self.include_frozen else _frozen_by_other_callbacks(trainer, pl_module, self)
        with _frozen(later):
            self.report = init_weights(
                pl_module,
                **opts,
                skip_pretrained=self.skip_pretrained,
                include_frozen=self.include_frozen,
                generator=generator,
            )
        self._done = weakref.ref(pl_module)
        rank_zero_info(f"WeightInit ({opts['scheme']}, seed {seed}): {self.report}")
        if self.report.frozen:
            roots = frozen_roots(pl_module, self.report.frozen)
            shown = ", ".join(roots[:8]) + (f", ... ({len(roots) - 8} more)" if len(roots) > 8 else "")
            rank_zero_info(
                f"WeightInit: left {len(self.report.frozen)} frozen parameters unchanged in {shown}; "
                f"pass include_frozen=True to initialise them too"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("include_frozen", False)  # pickles of older versions
        self.__dict__.update(state)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.report is not None:
            rank_zero_info("WeightInit: resuming from a checkpoint; its weights replace the initialisation")


def _frozen_by_other_callbacks(trainer: L.Trainer, pl_module: L.LightningModule, me: Callback) -> list[Any]:
    """The parameters that other callbacks (such as ``FreezeBackbone``) freeze in their
    ``setup``, as they announce them with ``params_frozen_at_setup(pl_module)``."""
    out: list[Any] = []
    for callback in getattr(trainer, "callbacks", []):
        announce = getattr(callback, "params_frozen_at_setup", None)
        if callback is not me and callable(announce):
            out += [p for p in announce(pl_module) if p.requires_grad]
    return out


@contextlib.contextmanager
def _frozen(params: list[Any]) -> Iterator[None]:
    """``requires_grad=False`` on ``params`` inside the block, restored after it."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _seed_from_global_rng() -> int:
    """A seed drawn from the global CPU torch RNG, which is then restored: the global stream
    continues as if nothing had been drawn, yet the seed follows ``seed_everything``."""
    with torch.random.fork_rng(devices=[]):
        return int(torch.randint(0, 2**62, (1,)).item())
