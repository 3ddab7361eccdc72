"""schemathesis against the query API's own OpenAPI schema, in process (ASGI): every endpoint,
every check (no 5xx, status codes, content types, headers and bodies as declared, schema-valid
requests accepted, schema-invalid ones refused, auth not ignored, unsupported methods 405).

``VISTREAM_FUZZ_CASES`` sets the examples per operation and phase (default 100: over 1,000
cases in all, about 75 s on a shared 2-core machine; a quarter as many stateful sequences);
the run is derandomized, so it fails the same way twice. The app and the image strategies are
in tests/pipeline/fuzz_api.py; figures and the command-line run in docs/reliability.md (section 5)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.pipeline.fuzz_api import TOKEN, build_app

pytestmark = pytest.mark.slow  # about 75 s
CASES = int(os.environ.get("VISTREAM_FUZZ_CASES", "100"))
APP, BUS = build_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.update(headers={"Authorization": f"Bearer {TOKEN}"})
SENT: Counter[str] = Counter()


@schema.parametrize()
@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_against_its_schema(case):
    SENT[f"{case.method} {case.path}"] += 1
    case.call_and_validate()


class Workflow(schema.as_state_machine()):
    """Sequences of calls along the links schemathesis infers (POST /tracks -> DELETE
    /tracks/{id}, ...), every response checked as above."""

    def after_call(self, response, case):
        SENT[f"stateful {case.method} {case.path}"] += 1


TestWorkflow = Workflow.TestCase
TestWorkflow.settings = settings(max_examples=max(CASES // 4, 5), stateful_step_count=6,
                                 deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(HealthCheck))


def test_every_endpoint_was_fuzzed():
    """Runs after the fuzz tests (file order): every operation of the schema got requests."""
    if not SENT:
        pytest.skip("the fuzz tests did not run in this session")
    ops = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert ops <= set(SENT), ops - set(SENT)
    stateful = sum(v for k, v in SENT.items() if k.startswith("stateful "))
    print(f"\nschemathesis stateful: {stateful} calls in sequences")
    in_schema = sum(SENT[op] for op in ops)
    print(f"\nschemathesis: {sum(SENT.values()) - stateful} cases, {in_schema} of them to the {len(ops)} "
          f"operations of the schema (the rest: unsupported-method probes): "
          + ", ".join(f"{op} {SENT[op]}" for op in sorted(ops)))
