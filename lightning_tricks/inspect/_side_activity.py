"""Running a monitoring side activity (a capture, a picture) so that it never stops training."""

from __future__ import annotations

from collections.abc import Callable

from lightning_tricks.functional._checks import report_problem

__all__ = ["run_side_activity"]


def run_side_activity(run: Callable[[], object], on_error: str, what: str, consequence: str) -> bool:
    """Call ``run()``; if it raises, act on the failure as ``on_error`` says (raise, warn or
    ignore), naming ``what`` failed and ``consequence``, and return ``False`` so the caller
    stops trying. Training goes on unless ``on_error="raise"``."""
    try:
        run()
    except Exception as err:  # a side activity stops training only when asked to
        report_problem(
            on_error,
            f"{what} failed with {type(err).__name__}: {err}. {consequence}",
            ValueError if isinstance(err, ValueError) else RuntimeError,
        )
        return False
    return True
