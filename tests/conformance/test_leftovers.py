"""Leftovers after failures: every component that can patch the model, driven through
failing runs (see :mod:`tests.conformance.leftovers`), leaves the model plain."""

from __future__ import annotations

import pytest

from tests.conformance.leftovers import check_leftovers
from tests.conformance.test_conformance import _skip, params


@pytest.mark.parametrize(("name", "spec"), params("leftovers"))
def test_failed_runs_leave_the_model_plain(name, spec, tmp_path):
    _skip(spec, "leftovers")
    check_leftovers(name, spec, tmp_path)
