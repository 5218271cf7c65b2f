"""Shared fixtures: GPU tests skip cleanly without CUDA; every test starts with a fresh Dynamo."""

from __future__ import annotations

import os

# The Triton interpreter's dot is numpy's matmul.  OpenBLAS's AVX2 (Haswell) sgemm kernel gives a row
# different bits depending on where it sits in the tile, which fails invariance tests on the CPU for a
# reason no GPU or NPU has; its AVX (Sandybridge) kernel computes every row alike.  Set (over any value
# the environment has) before numpy loads OpenBLAS; .ci/run exports it too.
os.environ["OPENBLAS_CORETYPE"] = "Sandybridge"

import pytest  # noqa: E402
import torch  # noqa: E402

_LONG_FILES = ("tests/vllm/", "tests/test_fuzz.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A worker runs a file whole: the files with minutes-long tests (vLLM's engines and servers, the thousand fuzzed
    # compositions) go first, so that none runs on one worker while the other idles (a stable sort).
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FILES))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()
