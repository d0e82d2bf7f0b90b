"""Bad constructor input gets a clear ValueError/TypeError that names the argument.

Hypothesis feeds every exported class random values for random subsets of its
constructor arguments (starting from a valid configuration from the conformance
settings); the only acceptable outcomes are success or an error naming an argument.
"""

from __future__ import annotations

import inspect

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.fabric.utilities.exceptions import MisconfigurationException

from tests.conformance.build import exported_classes, kind_of
from tests.conformance.settings import CONSTRUCT_ARGS, SETTINGS

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.text(max_size=4), st.integers(-2, 5)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _targets():
    out = []
    for name, cls in sorted(exported_classes().items()):
        if kind_of(cls) == "mixin" or cls.__init__ is object.__init__:
            continue
        out.append(pytest.param(name, cls, id=name))
    return out


def _base_kwargs(name: str) -> dict:
    if name in CONSTRUCT_ARGS:
        return dict(CONSTRUCT_ARGS[name]())
    if name in SETTINGS and SETTINGS[name][0].factory is None:
        return dict(SETTINGS[name][0].init_args)
    return {}


@pytest.mark.parametrize(("name", "cls"), _targets())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_constructor_arguments_fail_clearly(name, cls, data):
    params = [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    kwargs = _base_kwargs(name)
    for p in params:
        if data.draw(st.booleans(), label=f"replace {p.name}"):
            kwargs[p.name] = data.draw(JUNK, label=p.name)
    try:
        cls(**kwargs)
    except (ValueError, TypeError, MisconfigurationException) as err:
        message = str(err)
        assert any(p.name in message for p in params), (
            f"{name}({kwargs!r}) raised {type(err).__name__} without naming the argument: {message!r}"
        )
