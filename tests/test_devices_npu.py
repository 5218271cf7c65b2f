"""The NPU branch of ``devices``, checked without an NPU: core counts from torch_npu's documented
device properties, the eager dispatch key, the executor, HCCL/LCCL determinism under tensor
parallelism, and the NPU simulation switch that tests use."""

from __future__ import annotations

import logging
import os
import types

import pytest
import torch

from ascend_compile import devices


def _fake_torch_npu(monkeypatch: pytest.MonkeyPatch, **props: int) -> None:
    """``torch.npu`` as torch_npu installs it, with ``get_device_properties`` giving ``props``."""
    fake = types.SimpleNamespace(get_device_properties=lambda index: types.SimpleNamespace(name="Ascend910B4", **props),
                                 is_available=lambda: True)
    monkeypatch.setattr(torch, "npu", fake, raising=False)
    devices._describe.cache_clear()
    monkeypatch.setattr(devices, "_describe", devices._describe)


def test_npu_core_counts_come_from_torch_npu_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_npu(monkeypatch, cube_core_num=20, vector_core_num=40)
    try:
        device = devices._describe("npu", 0)
    finally:
        devices._describe.cache_clear()
    assert (device.compute_units, device.npu.ai_cores, device.npu.vector_cores) == (20, 20, 40)
    assert device.npu.ub_bytes == devices.NPU_UB_BYTES and device.plan_kind == "npu"
    assert device.default_executor == "fx"


def test_missing_core_counts_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_npu(monkeypatch)
    driver = types.SimpleNamespace(utils=types.SimpleNamespace(get_device_properties=lambda index: {}))
    import triton

    monkeypatch.setattr(triton.runtime.driver, "_active", driver)  # what driver.set_active() sets
    with pytest.raises(RuntimeError, match="reports no core counts"):
        devices._npu_core_counts(0)


def test_eager_mode_registers_npu_kernels_under_privateuse1() -> None:
    assert devices.dispatch_key("npu") == "PrivateUse1"
    with pytest.raises(ValueError, match="accepted device types: cuda, npu, cpu"):
        devices.dispatch_key("xpu")


def test_simulate_npu_gives_cpu_tensors_npu_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.ones(2)
    monkeypatch.delenv(devices.SIMULATE_NPU_ENV, raising=False)
    assert devices.of_tensor(x).plan_kind == "cpu"
    with devices.simulate_npu():
        simulated = devices.of_tensor(x)
        assert simulated.plan_kind == "npu" and simulated.kind == "cpu" and simulated.triton_interpreted
        assert devices.detect([x]).default_executor == "inductor"  # graphs still compile for the CPU
    assert devices.of_tensor(x).plan_kind == "cpu"
    monkeypatch.setenv(devices.SIMULATE_NPU_ENV, "1")
    assert devices.of_tensor(x).plan_kind == "npu"


def test_collective_determinism_is_set_only_for_tensor_parallel_npus(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    for name in devices.COLLECTIVE_DETERMINISM:
        monkeypatch.delenv(name, raising=False)
    npu = devices.Device(kind="npu", index=0, compute_units=20, triton_interpreted=False,
                         npu=devices.NpuFacts(ai_cores=20, vector_cores=40, ub_bytes=devices.NPU_UB_BYTES))
    cuda = devices.Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False)
    assert devices.configure_collectives(npu, 1) == {} and devices.configure_collectives(cuda, 8) == {}
    assert not any(name in os.environ for name in devices.COLLECTIVE_DETERMINISM)
    with caplog.at_level(logging.INFO, logger="ascend_compile.devices"):
        assert devices.configure_collectives(npu, 2) == {"HCCL_DETERMINISTIC": "strict", "LCCL_DETERMINISTIC": "1"}
    assert "set HCCL_DETERMINISTIC=strict" in caplog.text
    monkeypatch.setenv("HCCL_DETERMINISTIC", "false")
    with caplog.at_level(logging.WARNING, logger="ascend_compile.devices"):
        assert devices.configure_collectives(npu, 2)["HCCL_DETERMINISTIC"] == "false"
    assert "HCCL_DETERMINISTIC=false (set by the user) is kept" in caplog.text
