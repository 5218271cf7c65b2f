"""vLLM's AOT compile with ascend_bi, without an engine: the artifact saves and loads with the same bits,
and ascend_bi's part of the cache key moves with its options, settings, code and torch version."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ascend_compile

pytest.importorskip("vllm.compilation.caching")

from ascend_compile.vllm import cache_key as key_module  # noqa: E402
from ascend_compile.vllm.artifact import AscendBIArtifact, compile_for_vllm  # noqa: E402
from ascend_compile.vllm.cache_key import cache_key, source_hash  # noqa: E402

OPTIONS = {"graphs": "off"}


class Block(torch.nn.Module):
    """A linear layer, an RMSNorm and a softmax: three order-sensitive reductions."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 96)
        self.norm = torch.nn.RMSNorm(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)).softmax(-1)


def _forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def test_saved_artifact_loads_and_gives_the_same_bits() -> None:
    """What vLLM does at the first start (aot_compile, save) and the next (load, finalize_loading, run)."""
    from torch._dynamo.aot_compile import AOTCompiledFunction

    torch.manual_seed(0)
    block = Block().eval()
    x = torch.randn(5, 64)
    torch._dynamo.mark_dynamic(x, 0)
    backend = lambda gm, inputs: compile_for_vllm(gm, inputs, options=OPTIONS)  # noqa: E731
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(_forward, fullgraph=True, dynamic=False, backend=backend)
    probes = [torch.randn(n, 64, generator=torch.Generator().manual_seed(n)) for n in (2, 7)]
    with torch.no_grad():
        first = compiled.aot_compile(((block, x), {}))
        assert isinstance(first._artifacts.compiled_fn, AscendBIArtifact)
        want = [first(block, p) for p in probes]
        data = AOTCompiledFunction.serialize(first).serialized_data
        torch._dynamo.reset()
        ascend_compile.clear_reports()
        loaded = AOTCompiledFunction.deserialize(data)
        artifact = loaded._artifacts.compiled_fn
        assert artifact.compiled is None  # nothing compiled until vLLM finalizes the load
        artifact.finalize_loading(SimpleNamespace(compilation_config=None, additional_config={}))
        got = [loaded(block, p) for p in probes]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    # The load ran the pipeline again: its report is there, every reduction rewritten.
    loaded_report = ascend_compile.reports()[-1]
    assert loaded_report.batch_invariant and sum(loaded_report.rewrites.values()) >= 3, loaded_report


def test_stale_artifact_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An artifact whose key is not this process's (other code or settings) is not run: vLLM compiles afresh."""
    artifact = AscendBIArtifact(graph=b"", parameters=frozenset(), options=dict(OPTIONS), key="stale")
    with pytest.raises(RuntimeError, match="saved by other ascend_bi code or options"):
        artifact.finalize_loading(SimpleNamespace(compilation_config=None, additional_config={}))
    data = AscendBIArtifact.serialize_compile_artifacts(artifact)
    assert AscendBIArtifact.deserialize_compile_artifacts(data).key == "stale"
    with pytest.raises(RuntimeError, match="format"):
        AscendBIArtifact.deserialize_compile_artifacts(data.replace(b"format", b"formaT"))


def test_cache_key_moves_with_options_settings_code_and_torch(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    base = cache_key(OPTIONS, {})
    assert cache_key(dict(OPTIONS), {}) == base
    assert cache_key(OPTIONS | {"strict": True}, {}) != base  # an option
    assert cache_key(OPTIONS, {"ASCEND_BI_STRICT": "1"}) != base  # a setting from the environment
    assert cache_key(OPTIONS, {"ASCEND_BI_SIMULATE_NPU": "1"}) != base  # a device variable outside Settings
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert cache_key(OPTIONS, {}) != base  # torch
    monkeypatch.undo()
    plan = tmp_path / "plans.py"
    plan.write_text("BLOCK_K = 64\n")
    monkeypatch.setattr(key_module, "_runtime_sources", lambda: iter([("ascend_compile.kernels/plans.py", plan)]))
    source_hash.cache_clear()
    try:
        before = cache_key(OPTIONS, {})
        plan.write_text("BLOCK_K = 32\n")
        source_hash.cache_clear()
        assert cache_key(OPTIONS, {}) != before  # plan-affecting code
    finally:
        monkeypatch.undo()
        source_hash.cache_clear()


def test_source_hash_covers_the_runtime_code_not_the_cli() -> None:
    names = {name for name, _ in key_module._runtime_sources()}
    for expected in ("ascend_compile.passes/rewrite_matmul.py", "ascend_compile.kernels/plans.py",
                     "ascend_compile.executors/inductor.py", "ascend_compile/backend.py",
                     "ascend_compile.vllm/artifact.py"):
        assert expected in names, sorted(names)
    assert not any(name.startswith("ascend_compile.tools") or "/tools/" in name for name in names)
