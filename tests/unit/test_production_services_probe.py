"""The scale-out test's probe for PostgreSQL and Redis: skip with the reason here, fail where CI requires them."""

from __future__ import annotations

import socket

import pytest

from tests.reliability.prefect_stack import REQUIRE_SERVICES_ENV, port_open, require_services


@pytest.fixture
def closed_port():
    """A port bound but not listening: connecting to it is refused, and nobody else can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def open_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_port_open_tells_a_listening_port_from_a_closed_one(open_port, closed_port):
    assert port_open("127.0.0.1", open_port)
    assert not port_open("127.0.0.1", closed_port)


def test_a_missing_service_skips_with_its_name_and_address(closed_port, open_port, monkeypatch):
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    services = {"PostgreSQL": ("127.0.0.1", closed_port), "Redis": ("127.0.0.1", open_port)}
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_services(services)
    assert f"PostgreSQL on 127.0.0.1:{closed_port}" in str(skipped.value)
    assert "Redis" not in str(skipped.value)


def test_where_ci_requires_the_services_a_missing_one_fails(closed_port, monkeypatch):
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    with pytest.raises(
        pytest.fail.Exception, match=f"Redis on 127.0.0.1:{closed_port}.*{REQUIRE_SERVICES_ENV}=1"
    ):
        require_services({"Redis": ("127.0.0.1", closed_port)})


def test_services_that_answer_neither_skip_nor_fail(open_port, monkeypatch):
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    require_services({"PostgreSQL": ("127.0.0.1", open_port), "Redis": ("127.0.0.1", open_port)})
