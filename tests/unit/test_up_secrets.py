"""``dagctl up``'s plan for secrets: a fresh ENGINE_TOKEN per ``up``, engines without the
secrets they have no use for, and https to the orchestrator when TLS is set (what it trusts
there, and the real processes: tests/integration/test_up_auth.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.dagctl.launching import plan


def ports() -> Any:
    counter = iter(range(40000, 40100))
    return lambda: next(counter)


def tokens() -> Any:
    counter = iter(range(100))
    return lambda: f"made-{next(counter)}"


SECRETS = {
    "API_TOKEN": "api",
    "DAGCTL_TOKEN": "dagctl",
    "DAGCTL_CERT_FILE": "/c.pem",
    "DAGCTL_KEY_FILE": "/c.key",
    "DAGCTL_SERVER": "https://x",
    "TLS_CERT_FILE": "/s.pem",
    "TLS_KEY_FILE": "/s.key",
    "TLS_CA_FILE": "/ca.pem",
}


def test_up_makes_an_engine_token_for_the_orchestrator_and_its_engines(tmp_path: Path) -> None:
    layout = plan(
        {}, engines=2, python="py", base_dir=tmp_path, pick_port=ports(), make_token=tokens()
    )
    assert layout.orchestrator.env["ENGINE_TOKEN"] == "made-0"
    assert [e.env["ENGINE_TOKEN"] for e in layout.engines] == ["made-0", "made-0"]
    # a blank one is no token: made afresh too
    again = plan(
        {"ENGINE_TOKEN": " "}, engines=1, python="py", base_dir=tmp_path, pick_port=ports()
    )
    made = again.orchestrator.env["ENGINE_TOKEN"]
    assert len(made) >= 40 and again.engines[0].env["ENGINE_TOKEN"] == made  # token_urlsafe(32)
    other = plan({}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    assert other.orchestrator.env["ENGINE_TOKEN"] != made  # one per up


def test_up_keeps_an_engine_token_the_caller_set(tmp_path: Path) -> None:
    layout = plan(
        {"ENGINE_TOKEN": "mine"},
        engines=2,
        python="py",
        base_dir=tmp_path,
        pick_port=ports(),
        make_token=tokens(),
    )
    assert layout.orchestrator.env["ENGINE_TOKEN"] == "mine"
    assert {e.env["ENGINE_TOKEN"] for e in layout.engines} == {"mine"}


def test_engines_get_none_of_the_orchestrators_or_dagctls_secrets(tmp_path: Path) -> None:
    environ = {**SECRETS, "PATH": "/bin", "LOG_FORMAT": "json", "TLS": "not a TLS_ variable"}
    layout = plan(environ, engines=2, python="py", base_dir=tmp_path, pick_port=ports())
    for engine in layout.engines:
        assert not set(SECRETS) & set(engine.env), engine.name
        assert engine.env["PATH"] == "/bin" and engine.env["LOG_FORMAT"] == "json"
        assert engine.env["TLS"] == "not a TLS_ variable"
    # the orchestrator is given what it serves with
    orch = layout.orchestrator.env
    for name in ("API_TOKEN", "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        assert orch[name] == SECRETS[name]


def test_with_tls_up_reaches_the_orchestrator_over_https(tmp_path: Path) -> None:
    plain = plan({}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    assert plain.http_url == "http://127.0.0.1:8080" and not plain.tls
    layout = plan(
        {"TLS_CERT_FILE": "/s.pem", "TLS_KEY_FILE": "/s.key"},
        engines=1,
        python="py",
        base_dir=tmp_path,
        pick_port=ports(),
    )
    assert layout.http_url == "https://127.0.0.1:8080"
    assert (layout.tls, layout.mutual_tls) == (True, False)
