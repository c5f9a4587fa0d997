"""The Python API functions: plain functions whose signature and help are the config fields."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc

import pytest

import cejobs
from cejobs.jobs.config import EvaluateConfig, GenerateConfig


def _default(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


@pytest.mark.parametrize("function, config", [(cejobs.generate, GenerateConfig),
                                              (cejobs.evaluate, EvaluateConfig)])
def test_signature_is_the_config_fields(function, config):
    fields = dataclasses.fields(config)
    params = inspect.signature(function).parameters
    assert list(params) == [f.name for f in fields]
    assert {p.kind for p in params.values()} == {inspect.Parameter.KEYWORD_ONLY}
    assert [p.default for p in params.values()] == [_default(f) for f in fields]
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    for f in fields:
        assert f"{f.name}: " in text, f.name
    assert f"{function.__name__}{inspect.signature(function)}" in text


def test_api_names_are_functions():
    for name in ("generate", "evaluate", "open_store"):
        assert inspect.isfunction(getattr(cejobs, name)), name
    assert cejobs.generate.__module__ == "cejobs.drivers.api"


def test_a_bad_field_is_a_config_error():
    from cejobs.errors import CejobsError, ConfigError

    with pytest.raises(ConfigError, match="sigma_ce|--sigma-ce") as info:
        cejobs.generate(sigma_ce=-1.0, backend="local")
    assert isinstance(info.value, CejobsError)
    with pytest.raises(ConfigError, match="unknown key 'sigmas'"):
        cejobs.generate(sigmas=1)
