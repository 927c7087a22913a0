"""Fixtures over tests/harness.py: backends, pyngx and nginx servers, all cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.harness import (
    Backend,
    Nginx,
    Pyngx,
    ServerProcess,
    nginx_available,
    nginx_conf,
    pyngx_conf,
)


class ServerFactory(Protocol):
    def __call__(
        self,
        body: str,
        *,
        workers: int = 1,
        level: str = "info",
        extra_args: tuple[str, ...] = (),
        start: bool = True,
    ) -> ServerProcess: ...


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    setup = getattr(request.node, "rep_setup", None)
    return bool((rep is not None and rep.failed) or (setup is not None and setup.failed))


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    """Factory: backend(mode="record", banner=None, ...) -> a running Backend."""
    made: list[Backend] = []

    def make(*args: Any, **kwargs: Any) -> Backend:
        b = Backend(*args, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _server_factory(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, made: list[ServerProcess]
) -> ServerFactory:
    def make(
        body: str,
        *,
        workers: int = 1,
        level: str = "info",
        extra_args: tuple[str, ...] = (),
        start: bool = True,
    ) -> ServerProcess:
        name = kind if not made else f"{kind}{len(made)}"
        server: ServerProcess
        if kind == "pyngx":
            prefix = Pyngx.prefix_dir(tmp_path, name)
            conf = pyngx_conf(body, prefix=prefix, workers=workers, level=level)
            server = Pyngx(tmp_path, conf, extra_args=extra_args, name=name)
        elif kind == "nginx":
            if not nginx_available():
                pytest.skip("Debian's nginx with the stream module is not installed")
            prefix = Nginx.prefix_dir(tmp_path, name)
            conf = nginx_conf(body, prefix=prefix, workers=workers, level=level)
            server = Nginx(tmp_path, conf, extra_args=extra_args, name=name)
        else:
            raise ValueError(f"unknown server kind {kind!r}")
        made.append(server)
        if start:
            server.start()
        return server

    return make


def _stop_all(made: list[ServerProcess], request: pytest.FixtureRequest) -> None:
    for server in made:
        server.stop()
        if _failed(request):
            # Shown in the failure report ("Captured stdout teardown").
            print(f"--- {server!r} error log ---\n{server.error_log_text()}")
            stderr = server.stderr_text()
            if stderr:
                print(f"--- {server!r} stderr ---\n{stderr}")


@pytest.fixture
def pyngx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Factory: pyngx(body, workers=1, level="info") -> a started Pyngx (stopped at teardown).

    `body` follows the main directives of harness.pyngx_conf (daemon, pid, error_log, events).
    """
    made: list[ServerProcess] = []
    yield _server_factory("pyngx", tmp_path, request, made)
    _stop_all(made, request)


@pytest.fixture
def nginx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Factory: nginx(body, workers=1, level="info") -> a started Nginx; skips without nginx."""
    if not nginx_available():
        pytest.skip("Debian's nginx with the stream module is not installed")
    made: list[ServerProcess] = []
    yield _server_factory("nginx", tmp_path, request, made)
    _stop_all(made, request)


# The implementations that differential tests run against. pyngx joins once its server exists:
#     SERVER_KINDS = [pytest.param("nginx", marks=pytest.mark.nginx), "pyngx"]
# Each test that uses `server` then runs once per kind (test ids [nginx], [pyngx]); the nginx
# marker sits on the nginx parameter only, so `-m "not nginx"` still runs the pyngx half.
SERVER_KINDS = [pytest.param("nginx", marks=pytest.mark.nginx), "pyngx"]


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    differs = request.node.get_closest_marker("pyngx_differs")
    if kind == "pyngx" and differs is not None:
        pytest.skip(f"pyngx deliberately differs: {differs.args[0]}")
    return kind


@pytest.fixture
def server(
    server_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Factory like `pyngx`/`nginx`, for the implementation named by `server_kind`."""
    made: list[ServerProcess] = []
    yield _server_factory(server_kind, tmp_path, request, made)
    _stop_all(made, request)
