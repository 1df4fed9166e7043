"""Kubernetes discovery as it runs in a pod, and outage texts that follow the latest cause.

In a pod the client reaches the API server at ``KUBERNETES_SERVICE_HOST``/``PORT`` over TLS, with
the service account's token and ``ca.crt``. The fake serves https with a certificate from a test
CA; the client's fixed service-account paths are pointed at a temporary directory, the one thing
the orchestrator gives no setting for. The real client library does the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from kubernetes.aio.config import incluster_config

from orchestrator.discovery_kubernetes import KubernetesDiscovery, check_settings
from orchestrator.settings import Settings
from tests.component.discovery_helpers import settings_for
from tests.component.test_kubernetes_discovery import Sink, discovering, watches
from tests.fakes.kube_api import SLICES, FakeKubeApi, _status, endpoint_slice

TOKEN = "service-account-token"


def serving(ca: trustme.CA) -> ssl.SSLContext:
    """What the API server serves: a certificate for its address, issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "kubernetes.default.svc").configure_cert(context)
    return context


def in_cluster(
    fake: FakeKubeApi, ca: trustme.CA, account: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The pod's view: service-account files in ``account``, the Service's host and port."""
    account.mkdir()
    (account / "token").write_text(TOKEN, encoding="utf-8")
    (account / "namespace").write_text("default", encoding="utf-8")
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    # the client reads /var/run/secrets/kubernetes.io/serviceaccount/ and nothing else
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(fake.port))
    return Settings(discovery_mode="kubernetes", in_cluster_config=True, discovery_interval=30.0)


async def test_in_cluster_discovery_uses_the_service_account_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    fake = FakeKubeApi()
    fake.ssl_context = serving(ca)
    fake.tokens = {TOKEN}  # as a cluster does: no token, no answer
    await fake.start()
    try:
        settings = in_cluster(fake, ca, tmp_path / "serviceaccount", monkeypatch)
        check_settings(settings)  # start-up takes it for a pod
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
        async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, _):
            assert sink.addresses == {"10.0.0.1:50051"}
            await sink.until(lambda: fake.watch_count() == 1, "a watch")
            fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
            await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "by the watch")

            # the projected token is re-issued: the old one is refused, the file has the new
            fake.tokens = {"reissued"}
            (tmp_path / "serviceaccount" / "token").write_text("reissued", encoding="utf-8")
            fake.drop_watches()
            fake.put(SLICES, endpoint_slice("engines", [("10.0.0.3", True)], 50051))
            await sink.until(lambda: sink.addresses == {"10.0.0.3:50051"}, "the new token used")
            await sink.until(lambda: discovery.trouble() is None, "the episode over")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1, errors
        assert "HTTP 401" in errors[0]
        assert "service-account token (IN_CLUSTER_CONFIG=true)" in errors[0]
    finally:
        await fake.stop()


@pytest.mark.parametrize("mode", ["in-cluster", "kubeconfig"])
async def test_a_new_cluster_ca_is_named_while_untrusted_and_read_once_updated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    old, new = trustme.CA(), trustme.CA()
    fake = FakeKubeApi()
    fake.ssl_context = serving(old)
    fake.tokens = {TOKEN}
    await fake.start()
    try:
        if mode == "in-cluster":
            settings = in_cluster(fake, old, tmp_path / "serviceaccount", monkeypatch)
            ca_file = tmp_path / "serviceaccount" / "ca.crt"
            trusted_by = str(ca_file)
        else:
            ca_file = tmp_path / "ca.crt"
            old.cert_pem.write_to_path(str(ca_file))
            kubeconfig = fake.write_kubeconfig(
                tmp_path / "kubeconfig", token=TOKEN, ca_file=ca_file
            )
            settings = Settings(
                discovery_mode="kubernetes",
                in_cluster_config=False,
                kubeconfig=str(kubeconfig),
                discovery_interval=30.0,
            )
            trusted_by = f"the certificate authority of the kubeconfig {kubeconfig}"
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
        async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, _):
            await sink.until(lambda: fake.watch_count() == 1, "a watch")
            # the API server restarts with a certificate from a new CA; first it is down
            await fake.stop()
            await sink.until(
                lambda: "unreachable" in (discovery.trouble() or ""), "the API server down"
            )
            fake.ssl_context = serving(new)
            await fake.start()
            # up again, yet not trusted: that is what to show, not the connection refused before
            await sink.until(
                lambda: "not trusted" in (discovery.trouble() or ""), "the certificate named"
            )
            trouble = discovery.trouble() or ""
            assert trouble.startswith(
                f"Kubernetes API server's certificate is not trusted by {trusted_by}: "
            ), trouble
            assert "CERTIFICATE_VERIFY_FAILED" in trouble
            assert "Connect call failed" not in trouble

            # the new CA reaches the file (the kubelet, or whoever rotates the kubeconfig's)
            fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
            new.cert_pem.write_to_path(str(ca_file))
            await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "trusted again")
            await sink.until(lambda: discovery.trouble() is None, "the episode over")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 2, errors
        assert errors[0].startswith("Kubernetes API unreachable: "), errors
        assert errors[1].startswith(
            f"Kubernetes API server's certificate is not trusted by {trusted_by}: "
        ), errors
        assert "retrying with" in errors[1] and "read afresh" in errors[1]
    finally:
        await fake.stop()


@asynccontextmanager
async def watching_one_engine(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[KubernetesDiscovery, Sink]]:
    """Discovery of one ready engine, retrying quickly, once its first watch is open."""
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        yield discovery, sink


async def test_the_outage_text_follows_a_new_cause_and_each_cause_is_logged_once(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_with(message: str) -> None:
        # every watch is accepted and fails at once: the same kind of outage, another cause
        error = {"type": "ERROR", "object": _status(500, "InternalError", message)}
        fake.watch_lines = [json.dumps(error).encode() + b"\n"]

    async with watching_one_engine(fake, tmp_path, caplog) as (discovery, sink):
        failing_with("etcd cluster is unavailable")
        fake.drop_watches()
        await sink.until(
            lambda: "etcd cluster is unavailable" in (discovery.trouble() or ""), "the first"
        )
        since = (discovery.trouble() or "").rpartition(" (since ")[2]
        failing_with("storage is being reinitialized")
        await sink.until(
            lambda: "storage is being reinitialized" in (discovery.trouble() or ""), "the second"
        )
        assert "etcd" not in (discovery.trouble() or "")
        assert (discovery.trouble() or "").endswith(f" (since {since}")  # the same episode
        # back to the first cause: shown again, and not logged again
        failing_with("etcd cluster is unavailable")
        before = watches(fake)
        await sink.until(lambda: watches(fake) >= before + 3, "several watches")
        assert "etcd cluster is unavailable" in (discovery.trouble() or "")
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 2, logged
        assert "HTTP 500: etcd cluster is unavailable" in logged[0]
        assert "HTTP 500: storage is being reinitialized" in logged[1]

        # endless new causes are not logged endlessly: five of a kind, then /readyz only
        for n in "abcdef":
            failing_with(f"cause {n}")
            await sink.until(
                lambda n=n: f"cause {n}" in (discovery.trouble() or ""),  # type: ignore[misc]
                f"cause {n} shown",
            )
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert [m.rpartition(": ")[2] for m in logged[2:]] == [
            "cause a; keeping the 1 engines known and retrying",
            "cause b; keeping the 1 engines known and retrying",
            "cause c; keeping the 1 engines known and retrying",
        ], logged
        # another kind of trouble is still told
        fake.forbidden_watch = True
        await sink.until(lambda: "HTTP 403" in (discovery.trouble() or ""), "a refusal")
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 6 and "refused discovery" in logged[5], logged

        fake.forbidden_watch = False
        fake.watch_lines = None
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "watching again")
        await sink.until(lambda: discovery.trouble() is None, "the episode over")


async def test_a_refusal_that_spreads_from_watch_to_list_is_shown_and_logged_once(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with watching_one_engine(fake, tmp_path, caplog) as (discovery, sink):
        fake.forbidden_watch = True  # the Role loses watch, then list too
        fake.drop_watches()
        await sink.until(lambda: "cannot watch" in (discovery.trouble() or ""), "watch")
        fake.forbidden = True
        await sink.until(lambda: "cannot list" in (discovery.trouble() or ""), "list")
        # one RBAC refusal, whichever verb: the advice logged names both
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 1, logged
        assert "needs list and watch" in logged[0]


async def test_a_lasting_410_whose_versions_move_on_is_logged_once(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with watching_one_engine(fake, tmp_path, caplog) as (discovery, sink):
        fake.lag_watch_cache()
        fake.drop_watches()
        # each relist gets a newer resourceVersion, so each 410 names other numbers
        for n in range(2, 6):
            fake.put(SLICES, endpoint_slice("engines", [(f"10.0.0.{n}", True)], 50051))
            await sink.until(
                lambda n=n: sink.addresses == {f"10.0.0.{n}:50051"},  # type: ignore[misc]
                "a relist",
            )
            await sink.until(
                lambda: f"too old resource version: {fake.version} " in (discovery.trouble() or ""),
                "its 410 shown",
            )
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1, logged
    assert "410" in logged[0]


async def test_a_certificate_for_another_name_is_told_as_such_not_as_an_untrusted_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    fake = FakeKubeApi()
    fake.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # the CA the pod trusts signed it, for the Service's name, not the address used
    ca.issue_cert("kubernetes.default.svc").configure_cert(fake.ssl_context)
    fake.tokens = {TOKEN}
    await fake.start()
    try:
        settings = in_cluster(fake, ca, tmp_path / "serviceaccount", monkeypatch)
        discovery = KubernetesDiscovery(settings, backoff_max=0.2)
        sink = Sink()
        with caplog.at_level(logging.INFO, logger="orchestrator.discovery_kubernetes"):
            task = asyncio.create_task(discovery.run(sink))
            try:
                await sink.until(
                    lambda: "certificate" in (discovery.trouble() or ""), "the certificate named"
                )
                trouble = discovery.trouble() or ""
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # before: "... is not trusted by .../ca.crt", of a CA that is trusted
        assert trouble.startswith(
            "Kubernetes API server's certificate is not for the address the orchestrator"
            " connects to: "
        ), trouble
        assert "mismatch" in trouble
        [told] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert (
            "KUBERNETES_SERVICE_HOST read afresh (check it is a name the certificate has)" in told
        )
    finally:
        await fake.stop()
