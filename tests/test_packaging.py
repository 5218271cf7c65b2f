"""Extras, read from the installed package's metadata (no network): the `npu` extra brings
torch-npu and triton-ascend and never upstream `triton` (both install a top-level `triton`);
the CPU, CUDA and test extras do bring it; the base install names no Triton at all."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.requirements import Requirement

MACHINES = ["x86_64", "aarch64"]


def _resolved(extra: str | None, machine: str) -> set[str]:
    """Names of the requirements that apply with ``extra`` on Linux ``machine``."""
    names = set()
    for line in importlib.metadata.requires("ascend-compile") or []:
        req = Requirement(line)
        env = {"platform_machine": machine, "platform_system": "Linux", "sys_platform": "linux", "extra": extra or ""}
        if req.marker is None or req.marker.evaluate(env):
            names.add(req.name.lower().replace("_", "-"))
    return names


@pytest.mark.parametrize("machine", MACHINES)
def test_npu_extra_never_brings_upstream_triton(machine: str) -> None:
    names = _resolved("npu", machine)
    assert {"torch-npu", "triton-ascend", "torch"} <= names
    assert "triton" not in names


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("extra", ["cpu", "cuda", "dev"])
def test_gpu_cpu_and_test_extras_bring_upstream_triton(extra: str, machine: str) -> None:
    names = _resolved(extra, machine)
    assert "triton" in names and "triton-ascend" not in names and "torch-npu" not in names


def test_base_install_names_no_triton() -> None:
    assert not {"triton", "triton-ascend"} & _resolved(None, "x86_64")


def test_npu_extra_pins_torch_npu_to_its_torch() -> None:
    """torch-npu X.Y.Z requires torch==X.Y.Z: an unpinned torch-npu would make pip swap the
    installed CPU torch for the newest default x86_64 wheel, a CUDA build that requires upstream triton."""
    npu = [Requirement(line) for line in importlib.metadata.requires("ascend-compile") if 'extra == "npu"' in line]
    pins = {req.name: req.specifier for req in npu}
    assert str(pins["torch"]).removeprefix("==") == str(pins["torch-npu"]).removeprefix("==")


@pytest.mark.parametrize("extra", ["cpu", "dev"])
def test_interpreter_extras_bring_numpy(extra: str) -> None:
    """Triton's interpreter imports numpy; torch's CPU wheel and triton do not bring it."""
    assert "numpy" in _resolved(extra, "x86_64")
