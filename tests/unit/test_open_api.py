"""When the orchestrator says at start that its API is open to anyone who can reach it."""

from __future__ import annotations

import pytest

from orchestrator.serving import open_to_others
from orchestrator.settings import Settings

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("env", "open_"),
    [
        ({}, True),  # HOST defaults to [::], as in a pod
        ({"HOST": "10.1.2.3"}, True),
        ({"HOST": "orchestrator.example"}, True),
        ({"HOST": "[::]"}, True),
        ({"HOST": "127.0.0.1"}, False),
        ({"HOST": "::1"}, False),
        ({"HOST": "localhost"}, False),
        ({"API_TOKEN": "s3cret"}, False),
        ({"API_TOKEN": "   "}, True),  # blank is unset
    ],
)
def test_an_open_api_is_said_only_where_others_can_reach_it(
    env: dict[str, str], open_: bool
) -> None:
    assert open_to_others(Settings.from_env({**BASE, **env})) is open_


def test_the_document_says_what_the_server_holds_requests_and_probes_to() -> None:
    import jsonschema

    from orchestrator.serving_http import openapi_document

    doc = openapi_document()
    schemas = doc["components"]["schemas"]  # type: ignore[index]

    def answer_schema(path: str, status: str) -> object:
        content = doc["paths"][path]["get"]["responses"][status]["content"]  # type: ignore[index]
        ref = content["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    # before: a 503 of /readyz was documented as an Error, which its {status, reason} is not
    jsonschema.validate(
        {"status": "not ready", "reason": "0 engines"}, answer_schema("/readyz", "503")
    )
    listing = doc["paths"]["/api/v1/executions"]["get"]["parameters"]  # type: ignore[index]
    by_name = {p["name"]: p["schema"] for p in listing}
    assert "timed_out" in by_name["status"]["enum"]
    assert (by_name["limit"]["minimum"], by_name["limit"]["maximum"]) == (1, 1000)
    assert schemas["CancelRequest"]["additionalProperties"] is False
    assert schemas["Spec"]["required"] == ["id", "version", "nodes"]
