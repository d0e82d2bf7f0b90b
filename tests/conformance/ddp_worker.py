"""One rank of the conformance suite's shared 2-process DDP world (started by checks.py).

Usage: python -m tests.conformance.ddp_worker JOB.json OUT_DIR, with MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, NODE_RANK and LOCAL_RANK set, so that Lightning's ``ddp``
strategy joins this externally launched world instead of launching its own.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

warnings.filterwarnings("ignore")


def main(job_path: str, out_dir: str) -> None:
    from tests.conformance.broken import BROKEN_SPECS
    from tests.conformance.build import build_run, trainer_kwargs
    from tests.conformance.checks import _safe
    from tests.conformance.settings import spec_ids
    from tests.helpers.ddp import end_process_group
    from tests.helpers.utils import whole_state

    torch.set_num_threads(1)
    out = Path(out_dir)
    rank = int(__import__("os").environ["LOCAL_RANK"])
    specs = {tid: (name, spec) for name, spec, tid in spec_ids()}
    specs.update(BROKEN_SPECS)
    items = json.loads(Path(job_path).read_text())["items"]
    for test_id, _name in items:
        name, spec = specs[test_id]
        safe = _safe(test_id)
        try:
            model, dm, callbacks, plugins, _ = build_run(name, spec)
            # with the suite's TensorBoardLogger under <out>/<safe>/logs: rank-zero logging and
            # the log_dir that both ranks must agree on are part of the check
            kwargs = trainer_kwargs(spec, out / safe, devices=2)
            kwargs["strategy"] = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
            trainer = L.Trainer(callbacks=callbacks, plugins=plugins or None, **kwargs)
            trainer.fit(model, datamodule=dm)
            result = {"state": whole_state(trainer, model), "log_dir": str(trainer.log_dir)}
            torch.save(result, out / f"{safe}.rank{rank}.pt")
        except Exception:
            (out / f"{safe}.rank{rank}.err").write_text(traceback.format_exc())
            sys.stdout.flush()
            raise SystemExit(1) from None  # the world may be out of step now: the parent retries alone
    end_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
