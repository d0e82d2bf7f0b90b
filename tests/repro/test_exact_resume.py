"""ExactResume: checkpointed random number generators make a resume with dropout and
loader workers bitwise exact, in one process and under 2-process DDP."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_tricks import ExactResume
from lightning_tricks.functional import capture_rng_state, gather_rng_states, restore_rng_state
from tests.conformance.checks import launch_two_ranks
from tests.helpers.utils import state_diff
from tests.helpers.zoo_exactresume import straight_and_resumed

REPO_ROOT = Path(__file__).resolve().parents[2]


def _draws():
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], random.gauss(0, 1)


def test_capture_restore_round_trip_through_weights_only_checkpoint(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in Python's and numpy's state
    np.random.standard_normal()
    state = capture_rng_state()
    first = _draws()
    torch.save({"rng": state}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    restore_rng_state(loaded)
    again = _draws()
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]


def test_gather_without_process_group_is_this_process():
    states = gather_rng_states()
    assert len(states) == 1 and torch.equal(states[0]["torch"], torch.get_rng_state())


def test_restore_rejects_what_is_not_a_state():
    with pytest.raises(TypeError, match="`state`"):
        restore_rng_state({"torch": [1, 2]})


@pytest.mark.slow
def test_dropout_model_with_workers_resumes_bitwise_only_with_exact_resume(tmp_path):
    straight, resumed, last = straight_and_resumed(tmp_path / "exact", exact=True)
    diff = state_diff(straight, resumed)
    assert not diff, diff[:5]
    saved = torch.load(last, weights_only=True)  # no numpy object pickled
    ranks = saved["callbacks"]["ExactResume"]["ranks"]
    assert len(ranks) == 1 and isinstance(ranks[0]["torch"], torch.Tensor)
    # the same runs without ExactResume: dropout, shuffle and worker seeds drift apart
    straight, resumed, _ = straight_and_resumed(tmp_path / "plain", exact=False)
    assert any(k.startswith("model/") for k in state_diff(straight, resumed))


def test_resume_on_more_ranks_than_saved_warns(tmp_path):
    cb = ExactResume()
    cb.load_state_dict({"ranks": [capture_rng_state()]})

    class _T:
        global_rank, world_size = 1, 2

    with pytest.warns(UserWarning, match="1 rank"):
        cb._restore_now(_T(), recreate_iterator=False)  # type: ignore[arg-type]
    assert cb.state_dict()["ranks"] and not cb._restore


def test_state_loads_from_checkpoints_without_it():
    cb = ExactResume()
    cb.load_state_dict({})
    assert cb.state_dict() == {"ranks": []}


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_each_rank_resumes_its_own_stream(tmp_path):
    codes = launch_two_ranks(["-m", "tests.helpers.zoo_exactresume", str(tmp_path)], tmp_path, timeout=240)
    logs = "".join((tmp_path / f"worker{r}.log").read_text()[-2000:] for r in range(2))
    assert codes == [0, 0], logs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for r in (r0, r1):
        diff = state_diff(r["straight"], r["resumed"])
        assert not diff, diff[:5]
    saved = torch.load(r0["last"], weights_only=True)["callbacks"]["ExactResume"]["ranks"]
    # each rank's own stream is in the checkpoint (the ranks draw different dropout masks)
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_round_trip_through_weights_only_checkpoint(tmp_path):
    x = torch.ones(1024, device="cuda")
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.nn.functional.dropout(x, 0.5)
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.nn.functional.dropout(x, 0.5), first)
