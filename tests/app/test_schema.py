"""Schemathesis against our OpenAPI schema: generated requests for every operation, valid and invalid
(a bounded number of examples each), never get a 5xx, and every response matches the documented status
codes, content types and schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.services import Services
from retriever.store import KnowledgeBase
from tests.conftest import make_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation and mode; bounded and derandomized, so `make test` takes seconds and fails the same way twice.
EXAMPLES = 10


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_documented_responses(  # type: ignore[no-untyped-def]
    tmp_path: Path, kb: KnowledgeBase, generator, mode: GenerationMode
) -> None:
    services = Services(make_settings(tmp_path / "data", max_new_tokens=2), kb=kb, generator=generator)
    kb.ensure_collection("default")
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(services))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            # An operation without parameters or body (e.g. GET /healthz) has no invalid input to send.
            assert mode == GenerationMode.NEGATIVE, operation.label
