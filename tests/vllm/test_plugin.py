"""The vLLM plugin is inert unless asked; ascend_bi's options come from vLLM's config (no engine needed)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from ascend_compile.settings import Settings
from ascend_compile.vllm.config import options_from
from ascend_compile.vllm.plugin import register, requested


def _vllm_config(sizes: list[int], additional: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(compilation_config=SimpleNamespace(cudagraph_capture_sizes=sizes),
                           additional_config=additional)


def test_options_take_vllm_graph_settings_then_the_users() -> None:
    options = options_from(_vllm_config([1, 2, 4], {"ascend_bi": {"strict": True}}))
    settings = Settings.from_options(options)
    assert (settings.graphs, settings.capture_sizes, settings.strict) == ("off", (1, 2, 4), True)
    assert options_from(_vllm_config([], {})) == {"graphs": "off"}


def test_bad_options_name_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown option 'bogus'; accepted options:"):
        Settings.from_options(options_from(_vllm_config([], {"ascend_bi": {"bogus": 1}})))
    with pytest.raises(ValueError, match=r"additional_config\['ascend_bi'\] = 3 is not valid"):
        options_from(_vllm_config([], {"ascend_bi": 3}))


def test_switch_values() -> None:
    assert not requested({}) and not requested({"ASCEND_BI": "0"}) and requested({"ASCEND_BI": "1"})
    with pytest.raises(ValueError, match="ASCEND_BI='maybe' is not valid; accepted values: 1, true"):
        requested({"ASCEND_BI": "maybe"})


def test_plugin_is_inert_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from vllm import _custom_ops
        from vllm.v1.sample.sampler import Sampler
    except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip)
        pytest.skip(f"vllm is not importable: {error}")
    monkeypatch.delenv("ASCEND_BI", raising=False)
    before = (Sampler.forward, _custom_ops.create_onednn_mm, os.environ.get("VLLM_USE_AOT_COMPILE"))
    register()
    assert (Sampler.forward, _custom_ops.create_onednn_mm, os.environ.get("VLLM_USE_AOT_COMPILE")) == before


def test_compiler_adaptor_compiles_a_piece_and_rejects_bad_options() -> None:
    """Mode 3's CompilerInterface (vLLM on CPU runs mode 2, so the adaptor is exercised directly)."""
    import torch

    try:
        from ascend_compile.vllm.compiler import AscendBICompiler
    except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip)
        pytest.skip(f"vllm is not importable: {error}")
    compiler = AscendBICompiler()
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        compiler.compute_hash(_vllm_config([], {"ascend_bi": {"bogus": 1}}))
    assert compiler.compute_hash(_vllm_config([], {"ascend_bi": {"strict": True}}))
    piece = torch.fx.symbolic_trace(torch.nn.Linear(32, 16).eval())
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = piece(x)  # before compiling: Inductor rewrites the piece's output into a tuple
        compiled, handle = compiler.compile(piece, [x], {}, compile_range=None)
        torch.testing.assert_close(compiled(x), want)
    assert handle is None


def test_collective_determinism_is_set_at_plugin_load_on_npu_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM creates HCCL communicators before anything compiles: the plugin sets the switches."""
    from ascend_compile import devices
    from ascend_compile.vllm import plugin

    for name in devices.COLLECTIVE_DETERMINISM:
        monkeypatch.delenv(name, raising=False)
    plugin._deterministic_collectives()  # no NPU here: nothing set
    assert not any(name in os.environ for name in devices.COLLECTIVE_DETERMINISM)
    monkeypatch.setattr(devices, "npu_available", lambda: True)
    plugin._deterministic_collectives()
    assert {name: os.environ[name] for name in devices.COLLECTIVE_DETERMINISM} == devices.COLLECTIVE_DETERMINISM


def test_prompt_logprobs_run_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's model runner calls ``Sampler.compute_logprobs`` directly for prompt logprobs: once
    covered, it gives the log-softmax template's bits (a row alone and inside a batch alike), as a
    sampled token's logprob does inside ``Sampler.forward``.  Negative control: uncovered, the
    stock log_softmax gives other bits for the same logits."""
    import torch

    try:
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
        from vllm.v1.sample.sampler import Sampler
    except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip)
        pytest.skip(f"vllm is not importable: {error}")
    from ascend_compile.kernels.softmax import bi_softmax
    from ascend_compile.vllm import plugin

    for cls, name in ((LogitsProcessor, "forward"), (Sampler, "forward"), (Sampler, "compute_logprobs")):
        monkeypatch.setattr(cls, name, cls.__dict__[name])  # restored after the test
    logits = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0))
    stock = Sampler.compute_logprobs(logits)
    plugin._cover_sampler()
    covered = Sampler.compute_logprobs(logits)
    assert torch.equal(covered, bi_softmax(logits, -1, log=True))
    assert torch.equal(Sampler.compute_logprobs(logits[2:3]), covered[2:3])
    assert not torch.equal(covered, stock)
    assert torch.equal(torch.log_softmax(logits, -1), stock)  # eager mode is off again after the call
