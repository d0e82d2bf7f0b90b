"""Lightning layer of ``torch.compile``: compile at setup, report compile time and recompilations.

A documented pair: [`Compile`][lightning_tricks.Compile] <-> [`compile_modules`][lightning_tricks.functional.compile_modules]
(``lightning_tricks.functional.perf.compile``), which does the in-place compilation;
the callback decides when (``setup``, undone in ``teardown``) and reports.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_tricks._compat import compile_event_handler
from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import check_bool, check_choice, check_str, check_str_sequence
from lightning_tricks.functional.perf._targets import find_wrapped, unwrap
from lightning_tricks.functional.perf.compile import (
    COMPILE_MODES,
    CompiledForward,
    CompileMode,
    check_backend,
    compile_modules,
)

__all__ = ["Compile"]

_COMPILE_ID = re.compile(r"(\d+)/(\d+)")

RECOMPILE_ADVICE = (
    "Each recompilation costs as much as the first compile. Typical cause: a shape that "
    "changes between steps, e.g. the last, smaller batch of an epoch. Fixes: "
    "`DataLoader(..., drop_last=True)`; `Compile(dynamic=True)` to compile shape-generic code "
    "up front; or `torch._dynamo.mark_dynamic(x, 0)` on the input in the model."
)


class Compile(Callback):
    """``torch.compile`` the LightningModule's forward, or chosen submodules, for training.

    Compiles in ``setup`` (before DDP wraps the model) by replacing each target's
    ``forward`` with a compiled one in place, so parameter names, checkpoints, resume and
    DDP see the plain model. Compilation happens on the first forward; the callback
    measures it (``compile/time_s`` is logged through ``LightningModule.log`` on the
    training steps after which compilation was done, and reported at info level)
    and warns once, with the fix, when a graph is compiled again later in a stage for a
    reason such as a smaller last batch. The wrappers are removed in ``teardown``.

    Args:
        targets: module class names or globs over qualified submodule names
            (``"backbone.blocks.*"``); ``None`` compiles the LightningModule's
            ``forward`` (what ``self(x)`` in ``training_step`` calls).
        mode: ``torch.compile`` mode; ``"reduce-overhead"`` uses CUDA graphs.
        fullgraph: error on graph breaks instead of splitting the graph.
        dynamic: ``True`` compiles shape-generic code, ``False`` one graph per shape,
            ``None`` recompiles once as dynamic when a shape changes.
        backend: ``"inductor"`` generates fast kernels; ``"aot_eager"``/``"eager"`` trace
            without code generation (for debugging graph breaks and numerics).
        warn_recompiles: warn once when a recompilation happens after a stage's first step.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an unknown ``mode``; in ``setup`` for an unknown ``backend`` or
            ``targets`` that match no submodule.

    Example:
        >>> import lightning as L
        >>> callback = Compile(targets=["head"], backend="aot_eager")
        >>> trainer = L.Trainer(callbacks=[callback], accelerator="cpu", logger=False)
    """

    def __init__(
        self,
        targets: Sequence[str] | str | None = None,
        mode: CompileMode | None = None,
        fullgraph: bool = False,
        dynamic: bool | None = None,
        backend: str = "inductor",
        warn_recompiles: bool = True,
    ) -> None:
        self.targets = None if targets is None else check_str_sequence("targets", targets)
        self.mode = check_choice("mode", mode, COMPILE_MODES)
        self.fullgraph = check_bool("fullgraph", fullgraph)
        self.dynamic = None if dynamic is None else check_bool("dynamic", dynamic)
        self.backend = check_str("backend", backend)
        self.warn_recompiles = check_bool("warn_recompiles", warn_recompiles)
        self._reset()

    def _reset(self) -> None:
        self.compile_time_s = 0.0
        self.recompiles: list[str] = []
        self._installed: set[int] = set()
        self._stage: str | None = None
        self._first_batch = False
        self._seen_stages: set[str] = set()
        self._depth = 0
        self._t0 = 0.0
        self._warned = False
        self._reported = 0.0
        self._hooks: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hooks"] = None
        return state

    @property
    def state_key(self) -> str:
        return self._generate_state_key(targets=self.targets, backend=self.backend, mode=self.mode)

    # ------------------------------------------------------------------ compile events
    def _on_compile_start(self, args: Any) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _on_compile_end(self, args: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.compile_time_s += time.perf_counter() - self._t0
        trigger = str(getattr(args, "callback_trigger", ""))
        match = _COMPILE_ID.search(str(getattr(args, "compile_id", "")))
        if "DYNAMO" in trigger and match and int(match.group(2)) > 0 and not self._first_batch:
            self.recompiles.append(f"{self._stage or 'outside a step'}: compile id {match.group(0)}")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_backend(self.backend)
        self._remove(pl_module)  # what a run that crashed left installed
        self._reset()
        compiled = compile_modules(
            pl_module,
            None if self.targets is None else list(self.targets),
            mode=self.mode,
            fullgraph=self.fullgraph,
            dynamic=self.dynamic,
            backend=self.backend,
        )
        names = set(compiled)
        self._installed = {id(w) for n, w in find_wrapped(pl_module, CompiledForward) if n in names}
        handler = compile_event_handler()
        if handler is None:
            rank_zero_info("Compile: this torch has no compile-event API; compile time is not reported.")
        else:
            start, end = self._on_compile_start, self._on_compile_end
            handler.register_start_callback(start)
            handler.register_end_callback(end)
            self._hooks = (start, end)
        if not torch.cuda.is_available() and self.mode == "reduce-overhead":
            rank_zero_warn("Compile: mode='reduce-overhead' uses CUDA graphs, which do nothing on CPU.")

    def _batch_start(self, stage: str) -> None:
        self._stage = stage
        self._first_batch = stage not in self._seen_stages
        self._seen_stages.add(stage)

    def _batch_end(self, pl_module: L.LightningModule, log: bool) -> None:
        self._first_batch = False
        self._stage = None
        if self.compile_time_s > self._reported and self._depth == 0:
            self._reported = self.compile_time_s
            rank_zero_info(f"Compile: {self.compile_time_s:.2f} s spent compiling so far")
            if log:
                log_scalars(pl_module, self, {"time_s": self.compile_time_s})
        if self.recompiles and self.warn_recompiles and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"Compile: recompiled after the first step ({'; '.join(self.recompiles[:3])}). "
                + RECOMPILE_ADVICE
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end(pl_module, log=True)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start("sanity" if trainer.sanity_checking else "validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(pl_module, log=False)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(pl_module, log=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start("predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(pl_module, log=False)

    def _remove(self, pl_module: L.LightningModule) -> None:
        """Unwrap the compiled forwards and unregister the compile-event callbacks."""
        if self._installed:
            unwrap(pl_module, CompiledForward, only=self._installed)
        self._installed = set()
        handler = compile_event_handler()
        if self._hooks is not None and handler is not None:
            handler.remove_start_callback(self._hooks[0])
            handler.remove_end_callback(self._hooks[1])
        self._hooks = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning does not call ``teardown`` when a run fails: leave the model plain here.
        self._remove(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove(pl_module)
