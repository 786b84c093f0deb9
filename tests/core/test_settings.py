"""Configuration is validated at start-up with messages naming the variable."""

from __future__ import annotations

import pytest

from core.settings import ConfigurationError, load_settings


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"AISLE_DATABASE_URL": "mysql://x"}, "AISLE_DATABASE_URL"),
        ({"AISLE_REDIS_URL": "http://x"}, "AISLE_REDIS_URL"),
        ({"AISLE_EVENT_WEIGHTS": '{"like": 1}'}, "unknown event types ['like']"),
        ({"AISLE_EVENT_WEIGHTS": '{"view": -1}'}, "must be >= 0"),
        ({"AISLE_TRITON_TIMEOUT_S": "0"}, "AISLE_TRITON_TIMEOUT_S"),
        ({"AISLE_EMBEDDING_BATCH": "many"}, "AISLE_EMBEDDING_BATCH"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(monkeypatch, env, fragment):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert fragment in str(err.value)


def test_weights_and_keys_parse(monkeypatch):
    monkeypatch.setenv("AISLE_EVENT_WEIGHTS", '{"purchase": 10}')
    monkeypatch.setenv("AISLE_API_KEYS", " k1 , k2,, ")
    s = load_settings()
    assert s.event_weights == {"view": 0.0, "click": 0.0, "cart": 0.0, "purchase": 10.0, "review": 0.0}
    assert s.api_keys == ("k1", "k2")
