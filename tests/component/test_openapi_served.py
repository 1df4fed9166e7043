"""The OpenAPI document a server gives says what that server asks of a client: a bearer token
only where it has an API_TOKEN to check one against."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from orchestrator.serving_http import OPEN_PATHS, openapi_document
from tests.component.serving_helpers import served_facade


async def test_a_server_without_a_token_documents_no_route_as_needing_one(
    tmp_path: Path,
) -> None:
    async with (
        served_facade(tmp_path) as served,
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/api/v1/openapi.json") as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    operations = [
        (f"{method.upper()} {path}", op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]
    assert len(operations) > 20
    for where, op in operations:
        # before: every route but the open ones asked for a bearer token no server checks,
        # so a generated client refused to call without one
        assert op["security"] == [], where
        assert "401" not in op["responses"] and "403" not in op["responses"], where


def test_a_guarded_server_documents_the_token_everywhere_but_its_open_routes() -> None:
    paths = openapi_document(guarded=True)["paths"]
    assert isinstance(paths, dict)
    for path, ops in paths.items():
        assert isinstance(ops, dict)
        for op in ops.values():
            assert isinstance(op, dict)
            wanted = [] if path in OPEN_PATHS else [{"bearer": []}]
            assert op["security"] == wanted, path
            assert isinstance(op["responses"], dict)
            assert ("401" in op["responses"]) is (path not in OPEN_PATHS), path


def test_the_document_gives_the_limits_the_server_holds_to() -> None:
    import jsonschema

    from orchestrator.orchestrating import MAX_IDEMPOTENCY_KEY

    doc = openapi_document()
    paths = doc["paths"]
    assert isinstance(paths, dict)

    def param(path: str, method: str, name: str) -> dict[str, object]:
        [found] = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        schema: dict[str, object] = found["schema"]
        return schema

    key = param("/trigger/{workflow_id}", "post", "Idempotency-Key")
    assert key["maxLength"] == MAX_IDEMPOTENCY_KEY
    events = "/api/v1/executions/{execution_id}/events"
    assert param(events, "get", "after_seq")["minimum"] == 0
    assert param(events, "get", "limit")["minimum"] == 1
    history = "/api/v1/triggers/{trigger_id}/history"
    assert param(history, "get", "limit")["maximum"] == 1000
    assert "503" in paths["/api/v1/events"]["get"]["responses"]
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    trigger_id = schemas["TriggerCreate"]["properties"]["id"]
    jsonschema.validate("nightly-1.a_b", trigger_id)
    for refused in ("Nightly", "-x", "x" * 64, "a b"):
        try:
            jsonschema.validate(refused, trigger_id)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"{refused!r} is documented as a trigger id")
