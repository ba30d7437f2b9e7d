"""The client tests run against the real service: the live-server fixtures of tests/service, reused.

Fixtures are found by pytest only in the conftest files above a test, so the ones the client tests need
are taken over here by name (the same functions: a tiny random-weights model served by a real uvicorn
in a thread of the test process).
"""

from __future__ import annotations

from tests.service import conftest as service_fixtures

tiny_engine = service_fixtures.tiny_engine
embedded_service = service_fixtures.embedded_service
