"""TTAPredict: a LightningModule mixin whose ``predict`` (and optionally ``test``) use TTA."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.trainer.states import TrainerStatus

from lightning_tricks._base import LightningMixin

if TYPE_CHECKING:  # the mixin is only mixed into LightningModules: type-check it as one
    from lightning.pytorch import LightningModule as _ModuleBase
else:
    _ModuleBase = object
from lightning_tricks.functional.inference.tta_predict import MERGE_MODES, MergeMode, tta_predict
from lightning_tricks.functional.inference.views import parse_views

__all__ = ["TTAPredict", "batch_input"]

_NOTHING = object()


def batch_input(batch: Any, owner: str, hook: str = "tta_input") -> torch.Tensor:
    """The input tensor of a batch: the batch itself, or the first element of a tuple/list.

    ``hook`` names the method a user overrides to pick the input, for the error message.
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"{owner} cannot find the input in a batch of type {type(batch).__name__}; it expects a tensor or "
        f"a tuple/list whose first element is the input. Override `{hook}(batch)` to pick it."
    )


class TTAPredict(LightningMixin, _ModuleBase):
    """Test-time augmentation in ``trainer.predict`` (and, optionally, ``trainer.test``).

    While predicting (and testing, with ``tta_on_test``), every call of the module with one
    image tensor, positional or keyword (``self(x)``, ``self(pixel_values=x)``, other
    non-tensor arguments allowed), runs [`tta_predict`][lightning_tricks.functional.tta_predict]:
    the views of the batch go through ``forward`` in (planned) chunks and are merged. Your
    own ``predict_step``/``test_step`` therefore get TTA without changes; the mixin's
    default ``predict_step`` returns ``self(tta_input(batch))``. A call with several
    tensors raises a ``TypeError`` rather than silently skipping TTA. Training and
    validation are untouched. Under DDP each rank augments its own batches.

    If ``forward`` returns a ``ModelOutput``/dict or a tuple, the tensor chosen by
    ``tta_output`` is merged and returned in the same container (``type(out)(logits=merged)``,
    ``{key: merged}``, ``(merged,)``), so ``self(pixel_values=x).logits`` keeps working;
    the other fields are dropped. [`tta_forward`][lightning_tricks.TTAPredict.tta_forward] returns the merged tensor.

    Class attributes (set them in the class body or in ``__init__``):

    * ``tta_views`` (``("identity", "hflip")``): view strings, see
      [`parse_view`][lightning_tricks.functional.parse_view].
    * ``tta_merge`` (``"mean"``): how the views are merged, one of the modes of
      [`merge_outputs`][lightning_tricks.functional.merge_outputs].
    * ``tta_chunk_size`` (``"auto"``): most images per forward pass; ``"auto"`` plans it
      once per input shape (see [`clear_tta_plans`][lightning_tricks.functional.clear_tta_plans]),
      ``None`` runs all views at once.
    * ``tta_output`` (``None``): which tensor of ``forward``'s output to merge: ``None``
      takes a tensor as is, ``"logits"`` of a ``ModelOutput``/dict, element 0 of a tuple;
      or a key, an index or a callable.
    * ``tta_include_identity`` (``True``): add the identity view if missing.
    * ``tta_on_test`` (``False``): also apply TTA during ``trainer.test``.

    Nothing is installed on the module: TTA takes the place of ``forward`` for the length of
    one call, while the Trainer is running a predict (or a test, with ``tta_on_test``), so a
    predict that fails or is interrupted leaves the plain module behind, and every other call
    (``fit``, ``validate``, your own) runs the plain ``forward``. Inside [`tta_disabled`][lightning_tricks.TTAPredict.tta_disabled]
    every call is plain. If you override ``on_predict_start`` (or ``on_test_start``), call
    ``super()``. Forward hooks of the module run once per call, around the merged output;
    those of its submodules once per TTA forward pass (and a few more times on the first
    call of each input shape, when ``"auto"`` times the chunk sizes).

    Example:
        >>> import lightning as L, torch
        >>> class Net(TTAPredict, L.LightningModule):
        ...     tta_views = ("hflip", "vflip")
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.fc(x.mean((2, 3)))
        >>> net = Net()
        >>> net.tta_forward(torch.randn(5, 4, 6, 6)).shape
        torch.Size([5, 2])
    """

    tta_views: Sequence[str] = ("identity", "hflip")
    tta_merge: MergeMode = "mean"
    tta_chunk_size: int | Literal["auto"] | None = "auto"
    tta_output: str | int | Callable[[Any], torch.Tensor] | None = None
    tta_include_identity: bool = True
    tta_on_test: bool = False

    def _tta_check(self) -> None:
        name = type(self).__name__
        try:
            parse_views(self.tta_views)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}.tta_views: {err}") from None
        if self.tta_merge not in MERGE_MODES:
            raise ValueError(
                f"{name}.tta_merge must be one of {', '.join(MERGE_MODES)}; got {self.tta_merge!r}"
            )
        c = self.tta_chunk_size
        if c != "auto" and c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"{name}.tta_chunk_size must be 'auto', None or an int >= 1; got {c!r}")
        o = self.tta_output
        if not (o is None or callable(o) or (isinstance(o, str | int) and not isinstance(o, bool))):
            raise TypeError(f"{name}.tta_output must be None, a key, an index or a callable; got {o!r}")
        for attr in ("tta_include_identity", "tta_on_test"):
            if not isinstance(getattr(self, attr), bool):
                raise TypeError(f"{name}.{attr} must be a bool; got {getattr(self, attr)!r}")

    def tta_input(self, batch: Any) -> torch.Tensor:
        """The tensor to augment in ``batch`` (override for dict batches)."""
        return batch_input(batch, type(self).__name__)

    def _tta_run(self, model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
        self._tta_check()
        return tta_predict(
            model,
            x,
            list(self.tta_views),
            self.tta_merge,
            self.tta_chunk_size,
            include_identity=self.tta_include_identity,
            output=self.tta_output,
        )

    def tta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merged TTA output of ``x``: the tensor chosen by ``tta_output``, merged over the views.

        Works outside the Trainer as well, and inside ``predict_step``/``test_step`` (the
        views then run through the plain ``forward``: TTA is applied once).

        Example:
            >>> import lightning as L
            >>> class Net(TTAPredict, L.LightningModule):
            ...     def forward(self, x):
            ...         return x.mean((1, 2, 3))[:, None]
            >>> Net().tta_forward(torch.ones(2, 1, 4, 4))
            tensor([[1.],
                    [1.]])
        """
        with self.tta_disabled():
            return self._tta_run(self, x)

    @contextlib.contextmanager
    def tta_disabled(self) -> Iterator[None]:
        """Calls of the module inside this block run the plain ``forward``, also while predicting.

        [`TTAEvaluation`][lightning_tricks.TTAEvaluation] uses it to compare the plain model with TTA
        when ``tta_on_test`` makes the test-time ``forward`` TTA.

        Example:
            >>> import lightning as L
            >>> class Net(TTAPredict, L.LightningModule):
            ...     def forward(self, x):
            ...         return x.flatten(1)[:, :1]
            >>> net = Net()
            >>> with net.tta_disabled():
            ...     net(torch.arange(4.0).reshape(1, 1, 2, 2))
            tensor([[0.]])
        """
        depth = self.__dict__.get("_tta_bypass", 0)
        self.__dict__["_tta_bypass"] = depth + 1
        try:
            yield
        finally:
            self.__dict__["_tta_bypass"] = depth

    # -- ``self(x)`` runs TTA during predict/test ------------------------------------------------
    def _tta_wanted(self) -> bool:
        """Whether a call of the module now runs TTA: not bypassed and, when attached to a
        Trainer, that Trainer is running a predict, or a test with ``tta_on_test``; outside a
        Trainer (or under Fabric), when installed by hand with ``_tta_install``."""
        if self.__dict__.get("_tta_bypass", 0):
            return False
        manual = bool(self.__dict__.get("_tta_manual", False))
        try:
            trainer = self.trainer
        except RuntimeError:  # outside a Trainer
            return manual
        predicting = getattr(trainer, "predicting", None)  # None under Fabric
        if predicting is None:
            return manual
        # a predict that failed (or was interrupted) may leave its stage set, never its status
        if getattr(getattr(trainer, "state", None), "status", None) != TrainerStatus.RUNNING:
            return False
        return bool(predicting or (self.tta_on_test and trainer.testing))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # TTA replaces ``forward`` for the length of this one call only (so the module's own
        # hooks run once around the merged output): nothing outlives the call, whatever raises.
        if not self._tta_wanted():
            return super().__call__(*args, **kwargs)
        saved = self.__dict__.get("forward", _NOTHING)  # another component's wrapper, if any
        self.__dict__["forward"] = self._tta_call
        try:
            return super().__call__(*args, **kwargs)
        finally:
            if saved is _NOTHING:
                self.__dict__.pop("forward", None)
            else:
                self.__dict__["forward"] = saved

    def _tta_call(self, *args: Any, **kwargs: Any) -> Any:
        """``forward`` for the length of one call of the module while TTA is wanted."""
        plain = type(self).forward
        if not self._tta_wanted():
            return plain(self, *args, **kwargs)
        where: list[int | str] = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        where += [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        if not where:
            return plain(self, *args, **kwargs)
        if len(where) > 1:
            raise TypeError(
                f"{type(self).__name__}: TTA augments one image tensor per call, but forward was called with "
                f"several tensors ({', '.join(map(str, where))}) during predict/test; call it with the image "
                "alone, or call `lightning_tricks.functional.tta_predict` with a function of the image"
            )
        pos = where[0]
        x = args[pos] if isinstance(pos, int) else kwargs[pos]
        raw: list[Any] = [None]

        def call(img: torch.Tensor) -> Any:
            if isinstance(pos, int):
                out = plain(self, *args[:pos], img, *args[pos + 1 :], **kwargs)
            else:
                out = plain(self, *args, **{**kwargs, pos: img})
            raw[0] = out
            return out

        with self.tta_disabled():  # calls of self(...) inside forward run plain
            merged = self._tta_run(call, x)
        return _rewrap(raw[0], merged, self.tta_output)

    def _tta_install(self) -> None:
        """Apply TTA to calls made outside a Trainer (inside one, the Trainer's stage decides)."""
        self._tta_check()
        self.__dict__["_tta_manual"] = True

    def _tta_uninstall(self) -> None:
        self.__dict__.pop("_tta_manual", None)

    # The settings are checked when predict (and test, with ``tta_on_test``) starts, so that a
    # wrong one fails before the first batch.
    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._tta_check()

    def on_test_start(self) -> None:
        super().on_test_start()
        if self.tta_on_test:
            self._tta_check()

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> Any:
        """``self(tta_input(batch))``, which is TTA-merged during ``trainer.predict``."""
        return self(self.tta_input(batch))


def _rewrap(raw: Any, merged: torch.Tensor, output: Any) -> Any:
    """``merged`` in the container ``forward`` returned (only the merged field filled)."""
    if isinstance(raw, torch.Tensor) or (callable(output) and not isinstance(output, str | int)):
        return merged
    if isinstance(raw, Mapping) and not isinstance(output, int):
        key = "logits" if output is None else output
        if dataclasses.is_dataclass(raw):
            try:
                return type(raw)(**{key: merged})
            except TypeError:
                pass
        return {key: merged}
    if isinstance(raw, tuple | list):
        return (merged,) if (output or 0) == 0 else merged
    return merged
