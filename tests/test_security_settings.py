"""Kafka security settings pass from the command line and environment to the client; the
metrics endpoint's bind address is configurable."""

from __future__ import annotations

import pytest

from detector.errors import UserError
from stream.cli import build_parser
from stream.commands import _security, _settings


def args_for(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_sasl_ssl_passes_through_with_credentials_from_env(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("TSGUARD_SASL_USERNAME", "svc-tsguard")
    monkeypatch.setenv("TSGUARD_SASL_PASSWORD", "s3cret")
    args = args_for("--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                    "--ssl-cafile", str(ca))  # fmt: skip
    kwargs = _security(args).client_kwargs()
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-tsguard",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": str(ca),
    }


def test_security_protocol_from_env(monkeypatch):
    monkeypatch.setenv("TSGUARD_SECURITY_PROTOCOL", "SSL")
    assert _security(args_for()).client_kwargs() == {"security_protocol": "SSL"}


def test_plaintext_by_default():
    assert _security(args_for()).client_kwargs() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--sasl-mechanism", "PLAIN"], {}, "needs --security-protocol"),
        (
            ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"],
            {},
            "TSGUARD_SASL_USERNAME",
        ),
        (["--ssl-cafile", "/nonexistent/ca.pem"], {}, "no such file"),
    ],
)
def test_bad_security_settings_are_user_errors(monkeypatch, argv, env, message):
    monkeypatch.delenv("TSGUARD_SASL_USERNAME", raising=False)
    monkeypatch.delenv("TSGUARD_SASL_PASSWORD", raising=False)
    with pytest.raises(UserError, match=message):
        _security(args_for(*argv))


def test_metrics_bind_address_and_message_limit(monkeypatch):
    monkeypatch.setenv("TSGUARD_METRICS_ADDR", "127.0.0.1")
    args = args_for("--max-message-bytes", "4096", "--metrics-port", "9200")
    settings = _settings(args, "127.0.0.1:9092")
    assert (settings.metrics_addr, settings.metrics_port, settings.max_message_bytes) == (
        "127.0.0.1",
        9200,
        4096,
    )


def test_metrics_endpoint_binds_where_told():
    import socket
    import urllib.request

    from stream.broker import free_port
    from stream.metrics import Metrics

    port = free_port()
    Metrics().serve(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    assert "tsguard_points_total" in body
    # the port is taken on that address, so the endpoint really listens there
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", port))
