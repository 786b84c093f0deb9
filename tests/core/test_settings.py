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
        ({"AISLE_MAX_MESSAGE_BYTES": "1024"}, "AISLE_MAX_MESSAGE_BYTES"),
        ({"AISLE_MAX_CONCURRENT_STREAMS": "0"}, "AISLE_MAX_CONCURRENT_STREAMS"),
        ({"AISLE_RATE_LIMIT_QPS": "-1"}, "AISLE_RATE_LIMIT_QPS"),
        ({"AISLE_RATE_LIMIT_QPS": "inf"}, "AISLE_RATE_LIMIT_QPS"),
        ({"AISLE_RATE_LIMIT_BURST": "0"}, "AISLE_RATE_LIMIT_BURST"),
        ({"AISLE_RECOMMEND_CACHE_TTL_S": "-1"}, "AISLE_RECOMMEND_CACHE_TTL_S"),
        ({"AISLE_RECOMMEND_CACHE_TTL_S": "1e12"}, "AISLE_RECOMMEND_CACHE_TTL_S"),
        ({"AISLE_RECOMMEND_WARM_INTERVAL_S": "0"}, "AISLE_RECOMMEND_WARM_INTERVAL_S"),
        ({"AISLE_TLS_CERT": "/no/such/cert.pem", "AISLE_TLS_KEY": "/no/such/key.pem"}, "AISLE_TLS_CERT"),
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


def test_abuse_limits_default_to_documented_values(monkeypatch):
    s = load_settings()
    # 8 MiB messages, 100 streams per connection, no rate limit, plaintext (docs/api.md)
    assert (s.max_message_bytes, s.max_concurrent_streams, s.rate_limit_qps) == (8 * 1024 * 1024, 100, 0.0)
    assert s.tls_cert is None and s.tls_key is None and s.tls_client_ca is None
    # an unset burst is one second's worth of calls, at least one
    monkeypatch.setenv("AISLE_RATE_LIMIT_QPS", "2.5")
    assert load_settings().rate_limit_bucket == 3
    monkeypatch.setenv("AISLE_RATE_LIMIT_QPS", "0.2")
    assert load_settings().rate_limit_bucket == 1
    monkeypatch.setenv("AISLE_RATE_LIMIT_BURST", "40")
    assert load_settings().rate_limit_bucket == 40


PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"AISLE_TLS_CERT": PEM_CERT}, "AISLE_TLS_KEY: Value error, AISLE_TLS_CERT and AISLE_TLS_KEY go together"),
        ({"AISLE_TLS_KEY": PEM_KEY}, "AISLE_TLS_KEY: Value error, AISLE_TLS_CERT and AISLE_TLS_KEY go together"),
        ({"AISLE_TLS_CERT": PEM_CERT, "AISLE_TLS_KEY": PEM_CERT}, "is not a PEM private key"),
        ({"AISLE_TLS_CERT": PEM_KEY, "AISLE_TLS_KEY": PEM_KEY}, "AISLE_TLS_CERT: Value error"),
        ({"AISLE_TLS_CLIENT_CA": PEM_CERT}, "mTLS) need TLS"),
        ({"AISLE_TLS_CERT": PEM_CERT, "AISLE_TLS_KEY": PEM_KEY, "AISLE_TLS_CLIENT_CA": "junk"}, "AISLE_TLS_CLIENT_CA"),
    ],
)
def test_tls_files_are_checked_at_start_up(monkeypatch, tmp_path, files, fragment):
    # Given TLS variables naming files that are missing their partner or hold no PEM
    for name, text in files.items():
        path = tmp_path / f"{name.lower()}.pem"
        path.write_text(text)
        monkeypatch.setenv(name, str(path))
    # then loading the settings fails, naming the variable
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert fragment in str(err.value)


def test_tls_files_that_fit_together_load(monkeypatch, tmp_path):
    (tmp_path / "cert.pem").write_text(PEM_CERT)
    (tmp_path / "key.pem").write_text(PEM_KEY)
    monkeypatch.setenv("AISLE_TLS_CERT", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("AISLE_TLS_KEY", str(tmp_path / "key.pem"))
    monkeypatch.setenv("AISLE_TLS_CLIENT_CA", str(tmp_path / "cert.pem"))
    s = load_settings()
    assert s.tls_cert == tmp_path / "cert.pem" and s.tls_client_ca == tmp_path / "cert.pem"
