"""Process-group hygiene for the tests' 2-process CPU DDP runs (gloo).

PyTorch asks every process that joined a process group to destroy it before it exits.
Lightning does that at exit for NCCL only; a gloo group left to interpreter shutdown can
kill a rank whose run passed (SIGABRT, "terminate called without an active exception",
when a gloo worker thread is torn down after the interpreter). These helpers end the
group while the interpreter is whole.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy


def end_process_group() -> None:
    """Destroys the default process group if this process joined one (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlooDDP(DDPStrategy):
    """Lightning's DDP over gloo that ends the process group in ``teardown``.

    ``teardown`` runs in each rank after every callback's ``teardown``, when no collective
    is left, so ``GlooDDP(start_method="spawn")`` is ``strategy="ddp_spawn"`` that lets its
    workers exit cleanly, and ``GlooDDP()`` joins an externally launched world.
    """

    def __init__(self, start_method: str = "popen", timeout: float = 60, **kwargs) -> None:
        super().__init__(
            start_method=start_method,  # type: ignore[arg-type]
            process_group_backend="gloo",
            timeout=timedelta(seconds=timeout),
            **kwargs,
        )

    def teardown(self) -> None:
        super().teardown()
        end_process_group()
