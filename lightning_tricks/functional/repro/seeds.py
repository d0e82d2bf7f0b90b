"""Seed every random number generator and set the determinism flags in one call."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_tricks.functional._checks import check_bool, check_int

__all__ = ["SeedRecord", "freeze_seeds", "seed_worker"]

# cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2); these two are valid.
_CUBLAS_VALUES = (":4096:8", ":16:8")
_MAX_SEED = 2**32 - 1  # numpy's limit; torch accepts more but a seed must work everywhere

_np: Any
try:  # numpy is a dependency, but the seeding must not fail without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None


@dataclass
class SeedRecord:
    """What [`freeze_seeds`][lightning_tricks.functional.freeze_seeds] set, with the values it replaced.

    Attributes:
        seed: the seed given to every generator.
        deterministic: whether deterministic algorithms were switched on.
        set: setting name -> value now in force (``"torch.backends.cudnn.benchmark"``,
            ``"env:CUBLAS_WORKSPACE_CONFIG"``, ...).
        previous: setting name -> value before the call (``None`` for an unset variable).
        notes: caveats that apply to this call (e.g. that ``PYTHONHASHSEED`` only
            reaches child processes).

    Example:
        >>> record = freeze_seeds(3, deterministic=False)
        >>> record.set["torch.manual_seed"], record.set["torch.backends.cudnn.benchmark"]
        (3, True)
        >>> record.restore()
    """

    seed: int
    deterministic: bool
    set: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _rng_states: dict[str, Any] = field(default_factory=dict, repr=False)

    def restore(self) -> None:
        """Put back every flag, environment variable and generator state [`freeze_seeds`][lightning_tricks.functional.freeze_seeds] changed.

        Example:
            >>> import torch
            >>> state = torch.get_rng_state()
            >>> record = freeze_seeds(7)
            >>> record.restore()
            >>> torch.equal(torch.get_rng_state(), state)
            True
        """
        for key, value in self.previous.items():
            if key.startswith("env:"):
                name = key[4:]
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        if "torch.backends.cudnn.deterministic" in self.previous:
            torch.backends.cudnn.deterministic = self.previous["torch.backends.cudnn.deterministic"]
        if "torch.backends.cudnn.benchmark" in self.previous:
            torch.backends.cudnn.benchmark = self.previous["torch.backends.cudnn.benchmark"]
        if "torch.use_deterministic_algorithms" in self.previous:
            enabled, warn_only = self.previous["torch.use_deterministic_algorithms"]
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        states = self._rng_states
        if "python" in states:
            random.setstate(states["python"])
        if "numpy" in states and _np is not None:
            _np.random.set_state(states["numpy"])
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def freeze_seeds(
    seed: int = 0,
    deterministic: bool = True,
    *,
    benchmark: bool | None = None,
    warn_only: bool = False,
) -> SeedRecord:
    """Seed Python, NumPy, torch and CUDA and set the cuDNN / deterministic-algorithm flags.

    Sets, in order: ``PYTHONHASHSEED`` (environment), ``random.seed``,
    ``numpy.random.seed``, ``torch.manual_seed`` and ``torch.cuda.manual_seed_all``,
    ``torch.backends.cudnn.deterministic``, ``torch.backends.cudnn.benchmark``,
    ``torch.use_deterministic_algorithms`` and, in deterministic mode,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (kept if already set to a valid value).

    ``PYTHONHASHSEED`` only takes effect in processes started afterwards (DataLoader
    workers started with ``spawn``, DDP ranks launched by this process): the running
    interpreter has already chosen its string-hash seed. Likewise
    ``CUBLAS_WORKSPACE_CONFIG`` must be set before the first cuBLAS call of the process,
    so call this function at the very start of the script.

    Args:
        seed: the seed for every generator, ``0 <= seed < 2**32``.
        deterministic: switch on deterministic algorithms (``cudnn.deterministic=True``,
            ``torch.use_deterministic_algorithms(True)``, cuBLAS workspace) and turn
            cuDNN autotuning off. ``False`` turns them off again.
        benchmark: ``torch.backends.cudnn.benchmark``; default ``not deterministic``
            (autotuning is fastest for fixed input shapes but picks kernels by timing,
            so it is never deterministic).
        warn_only: with ``deterministic``, an operation without a deterministic
            implementation warns instead of raising.

    Returns:
        A [`SeedRecord`][lightning_tricks.functional.SeedRecord] of everything set and the previous values; call its
        ``restore()`` to undo the call.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``seed`` out of range, or ``benchmark=True`` with ``deterministic=True``.

    Example:
        >>> import torch
        >>> record = freeze_seeds(42)
        >>> a = torch.rand(2)
        >>> _ = freeze_seeds(42)
        >>> torch.equal(a, torch.rand(2))
        True
        >>> record.set["torch.backends.cudnn.benchmark"]
        False
        >>> record.restore()
    """
    seed = check_int("seed", seed, minimum=0, maximum=_MAX_SEED)
    deterministic = check_bool("deterministic", deterministic)
    warn_only = check_bool("warn_only", warn_only)
    if benchmark is None:
        benchmark = not deterministic
    benchmark = check_bool("benchmark", benchmark)
    if benchmark and deterministic:
        raise ValueError(
            "`benchmark` must be False when `deterministic` is True (cuDNN autotuning picks kernels "
            "by timing, which is not reproducible); got benchmark=True"
        )

    record = SeedRecord(seed=seed, deterministic=deterministic)
    record._rng_states["python"] = random.getstate()
    if _np is not None:
        record._rng_states["numpy"] = _np.random.get_state()
    record._rng_states["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        record._rng_states["cuda"] = torch.cuda.get_rng_state_all()

    def set_env(name: str, value: str) -> None:
        record.previous[f"env:{name}"] = os.environ.get(name)
        os.environ[name] = value
        record.set[f"env:{name}"] = value

    set_env("PYTHONHASHSEED", str(seed))
    record.notes.append(
        "PYTHONHASHSEED only affects processes started from now on (workers, DDP ranks), "
        "not the running interpreter"
    )
    # Lightning (if used) seeds its DistributedSampler and DataLoader workers from these.
    set_env("PL_GLOBAL_SEED", str(seed))

    random.seed(seed)
    record.set["random.seed"] = seed
    if _np is not None:
        _np.random.seed(seed)
        record.set["numpy.random.seed"] = seed
    else:  # pragma: no cover
        record.notes.append("numpy is not installed: its generator was not seeded")
    torch.manual_seed(seed)
    record.set["torch.manual_seed"] = seed
    torch.cuda.manual_seed_all(seed)  # lazy: also applies to devices initialised later
    record.set["torch.cuda.manual_seed_all"] = seed

    record.previous["torch.backends.cudnn.deterministic"] = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = deterministic
    record.set["torch.backends.cudnn.deterministic"] = deterministic
    record.previous["torch.backends.cudnn.benchmark"] = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    record.set["torch.backends.cudnn.benchmark"] = benchmark

    record.previous["torch.use_deterministic_algorithms"] = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    record.set["torch.use_deterministic_algorithms"] = (deterministic, warn_only)

    if deterministic:
        current = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if current in _CUBLAS_VALUES:
            record.set["env:CUBLAS_WORKSPACE_CONFIG"] = current
        else:
            set_env("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_VALUES[0])
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record.notes.append(
                "CUDA was already initialised: CUBLAS_WORKSPACE_CONFIG only applies to cuBLAS "
                "handles created from now on; call freeze_seeds before any CUDA work"
            )
    return record


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: seed Python and NumPy in each worker from torch's seed.

    torch already gives every worker its own seed (base seed + worker id); this passes it
    on to ``random`` and ``numpy.random``, which would otherwise start identical in every
    worker. Pair it with ``generator=torch.Generator().manual_seed(seed)`` on the loader.

    Args:
        worker_id: the worker's index (passed by the DataLoader; unused).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(range(4), worker_init_fn=seed_worker,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> seed_worker(0)  # in the main process it seeds from torch's initial seed
    """
    check_int("worker_id", worker_id, minimum=0)
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    if _np is not None:
        _np.random.seed(worker_seed)
