"""Property-based run of the OpenAPI spec with schemathesis: no request gets a 5xx.

Every operation gets a bounded number of generated requests (valid and invalid
parameters, random bodies for the upload), sent with the API token so the
upload's parsing is reached; responses must not be server errors and must
match the documented status codes and schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.config import Settings
from api.main import create_app
from tests.conftest import ROOT

TOKEN = "fuzz-token"
EXAMPLES = 40


def _no_network(request: Any, out_dir: Path, policy: Any) -> Any:
    raise RuntimeError("no active tests while fuzzing")


@pytest.fixture
def api_schema(tmp_path: Path) -> Any:
    # One app per test: schemathesis ends the app's lifespan (closing its store) with
    # each test.
    # Active tests the fuzzer requests run nothing on the network: the runner refuses.
    app = create_app(Settings(data_dir=tmp_path, api_token=SecretStr(TOKEN),
                              max_upload_bytes=1 << 20,
                              preload=(ROOT / "captures" / "sample-sip.pcap",)),
                     test_runner=_no_network)
    assert app.state.services.jobs.wait(60)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _check(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error, status_code_conformance,
                                   content_type_conformance, response_schema_conformance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=str)
def test_no_server_errors(api_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    unsatisfiable: list[str] = []
    for operation in operations:
        run = settings(max_examples=EXAMPLES, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))(
            given(case=operation.as_strategy(generation_mode=mode))(_check))
        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, or only free-form strings).
            assert mode is GenerationMode.NEGATIVE, operation.path
            unsatisfiable.append(operation.path)
        except Exception as exc:
            raise AssertionError(f"{operation.method.upper()} {operation.path} ({mode}): "
                                 f"{exc}") from exc
    assert len(unsatisfiable) < len(operations) // 2, unsatisfiable
