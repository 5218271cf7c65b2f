"""The ascend-bi command: demo output, exit codes, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ascend_compile.tools.cli", *args],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # the demo compiles a model three ways; tests/test_readme.py (slow) runs it as a newcomer would
def test_demo_shows_stock_differs_and_ascend_bi_does_not() -> None:
    result = _run("demo", "--batch-sizes", "2,5", "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    by_mode = {(r["mode"], r["batch"]): r for r in rows}
    assert all(by_mode[("ascend_bi", b)]["bitwise_equal"] for b in (2, 5))
    assert all(by_mode[("ascend_bi eager_mode", b)]["bitwise_equal"] for b in (2, 5))
    assert not all(by_mode[("torch.compile", b)]["bitwise_equal"] for b in (2, 5))


def test_usage_errors_exit_2_with_one_line() -> None:
    for args in (("demo", "--batch-sizes", "0,x"), ("demo", "--device", "tpu"), ("nonsense",)):
        result = _run(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
