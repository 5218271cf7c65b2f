"""Overlapped launches (programmatic dependent launch): asked for only by kernels that wait for
their inputs, and only where the device can overlap; the setting's bad values are errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ascend_compile import devices
from ascend_compile.devices import OVERLAP_LAUNCHES_ENV, Device, NpuFacts
from ascend_compile.kernels.plans import launch_options

GPU = Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False)
HOPPER = dataclasses.replace(GPU, overlapped_launches=True)
NPU = Device(kind="npu", index=0, compute_units=24, triton_interpreted=False,
             npu=NpuFacts(ai_cores=24, vector_cores=48, ub_bytes=192 * 1024))
CPU = Device(kind="cpu", index=0, compute_units=2, triton_interpreted=True)


def test_the_launch_option_comes_with_the_kernel_flag_where_the_device_overlaps() -> None:
    assert launch_options(HOPPER, 4, 3, overlap=True) == {"num_warps": 4, "num_stages": 3, "enable_fp_fusion": True,
                                                          "launch_pdl": True, "OVERLAP": True}
    # a kernel that does not wait
    assert launch_options(HOPPER, 4, 3) == {"num_warps": 4, "num_stages": 3, "enable_fp_fusion": True}
    assert launch_options(GPU, 4, 3, overlap=True) == {"num_warps": 4, "num_stages": 3, "enable_fp_fusion": True}
    assert launch_options(NPU, 4, 3, overlap=True) == {}
    assert launch_options(CPU, 4, overlap=True) == {"num_warps": 4}


def test_overlap_needs_sm90_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    capability = (9, 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.delenv(OVERLAP_LAUNCHES_ENV, raising=False)
    assert devices._overlaps_launches(0)  # this Triton has launch_pdl
    capability = (8, 0)
    assert not devices._overlaps_launches(0)
    capability = (9, 0)
    monkeypatch.setenv(OVERLAP_LAUNCHES_ENV, "0")
    assert not devices._overlaps_launches(0)
    monkeypatch.setenv(OVERLAP_LAUNCHES_ENV, "yes")
    with pytest.raises(ValueError, match=f"{OVERLAP_LAUNCHES_ENV}='yes' is not accepted; use 1 .* or 0"):
        devices._overlaps_launches(0)


def test_gluon_matmul_is_chosen_by_its_variable_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill schedules ask for the Gluon matmul only under ``ASCEND_BI_GLUON_MATMUL=1`` (default 0); another
    value is refused, naming the accepted ones.  The CPU never has the kernel."""
    monkeypatch.delenv(devices.GLUON_MATMUL_ENV, raising=False)
    assert not devices.gluon_matmul_chosen()
    monkeypatch.setenv(devices.GLUON_MATMUL_ENV, "1")
    assert devices.gluon_matmul_chosen()
    monkeypatch.setenv(devices.GLUON_MATMUL_ENV, "on")
    with pytest.raises(ValueError, match=f"{devices.GLUON_MATMUL_ENV}='on' is not accepted; use 1 .* or 0"):
        devices.gluon_matmul_chosen()
    cpu = devices.of_tensor(torch.empty(1))
    assert not cpu.gluon_wgmma and not cpu.gluon_wgmma_default


def test_cpu_tensors_never_overlap() -> None:
    assert not devices.of_tensor(torch.empty(1)).overlapped_launches
