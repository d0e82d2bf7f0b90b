"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage (``lightning_tricks.functional.<area>``), whose
``__all__`` lists its tricks; this module re-exports them all (the names are written once,
in the areas). Helpers that are not tricks (atomic writes, module-name resolution, ...) stay private.
"""

from __future__ import annotations

from lightning_tricks.functional import data, finetune, inference, inspect, optim, perf, repro
from lightning_tricks.functional.data import *  # noqa: F403
from lightning_tricks.functional.finetune import *  # noqa: F403
from lightning_tricks.functional.inference import *  # noqa: F403
from lightning_tricks.functional.inspect import *  # noqa: F403
from lightning_tricks.functional.optim import *  # noqa: F403
from lightning_tricks.functional.perf import *  # noqa: F403
from lightning_tricks.functional.repro import *  # noqa: F403

__all__: list[str] = []
__all__ += data.__all__
__all__ += finetune.__all__
__all__ += inference.__all__
__all__ += inspect.__all__
__all__ += optim.__all__
__all__ += perf.__all__
__all__ += repro.__all__
