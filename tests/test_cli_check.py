"""``ascend-bi check``: the table, the planted divergence located to its op and line, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ascend_compile.tools.check import compare, ulp_distance
from ascend_compile.tools.cli import main
from ascend_compile.tools.locate import _probe_slice
from ascend_compile.tools.targets import TargetError, load_target

TARGETS = Path(__file__).parent / "cli_targets"
RMS_HEAD = TARGETS / "rms_head.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ascend_compile.tools.cli", *args],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent.parent)


def _planted_line() -> int:
    lines = RMS_HEAD.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if "# the planted reduction" in line)


def test_planted_stock_matmul_is_located_to_its_node_and_line() -> None:
    result = _run("check", str(RMS_HEAD), "--disable-passes", "rewrite_matmul", "--batch-sizes", "5,8",
                  "--companions", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "ascend_bi: NOT batch-invariant" in out
    assert "first diverging node: mm = aten.mm.default (an order-sensitive reduction left stock)" in out
    assert f"source: {RMS_HEAD}:{_planted_line()} (logits = torch.matmul(h, self.weight)" in out
    assert "[1/6] ascend_bi: probe alone" in result.stderr  # progress goes to stderr


def test_fully_rewritten_model_is_invariant_and_stock_compile_is_not() -> None:
    result = _run("check", "tests.cli_targets.rms_head:target", "--batch-sizes", "5,8", "--companions", "1",
                  "--json", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    rows = {(r["mode"], r["batch"]): r for r in data["rows"]}
    assert data["invariant"] and data["divergence"] is None and data["uncovered_reductions"] == []
    assert all(rows[("ascend_bi", b)]["bitwise_equal"] and rows[("ascend_bi", b)]["max_ulps"] == 0 for b in (5, 8))
    # Negative control: stock torch.compile changes the probe's bits with the batch.
    stock = [rows[("torch.compile", b)] for b in (5, 8)]
    assert not all(r["bitwise_equal"] for r in stock)
    assert all(r["bitwise_equal"] or (r["max_ulps"] > 0 and r["max_abs_diff"] > 0) for r in stock)


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_LOGS", "-all")
    cases = {
        ("check", str(tmp_path / "missing.py")): "no such file",
        ("check", "no-such-model"): "unknown target 'no-such-model'; accepted: a built-in model (tiny-decoder)",
        ("check", str(RMS_HEAD), "--disable-passes", "rewrite_everything"): "accepted values",
        ("check", str(RMS_HEAD), "--companions", "0"): "--companions must be a positive integer",
        ("dump", "tests.cli_targets.bad:not_a_pair"): "must return (model, example_inputs)",
    }
    for args, message in cases.items():
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    # The installed command behaves the same: one line, no traceback.
    result = _run("dump", str(tmp_path / "missing.py"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"ascend-bi dump: no such file: {tmp_path / 'missing.py'}"


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("check", "dump", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and f"usage: ascend-bi {command}" in capsys.readouterr().out


def test_target_loading_errors_name_the_problem() -> None:
    with pytest.raises(TargetError, match="has no function 'nope'"):
        load_target(f"{RMS_HEAD}:nope")
    with pytest.raises(TargetError, match="batch on dim 0, with one batch size"):
        load_target("tests.cli_targets.bad:mixed_batches")
    with pytest.raises(TargetError, match="raised RuntimeError: no weights here"):
        load_target("tests.cli_targets.bad:raises")
    with pytest.raises(TargetError, match="cannot import module 'tests.no_such_module'"):
        load_target("tests.no_such_module:target")
    builtin = load_target("tiny-decoder")
    assert isinstance(builtin.model, torch.nn.Module) and builtin.example_inputs[0].dtype == torch.int64


def test_ulp_distance_counts_representable_floats() -> None:
    one = torch.tensor([1.0])
    assert ulp_distance(one, torch.nextafter(one, torch.tensor([2.0]))) == 1
    assert ulp_distance(torch.tensor([0.0]), torch.tensor([-0.0])) == 0
    tiny = torch.nextafter(torch.tensor([0.0]), torch.tensor([1.0]))
    assert ulp_distance(tiny, -tiny) == 2  # across zero
    half = torch.tensor([1.0], dtype=torch.bfloat16)
    assert ulp_distance(half, half + 2 ** -7) == 1  # bf16 has 7 mantissa bits


def test_compare_reads_the_probe_row_of_every_output() -> None:
    alone = (torch.tensor([[1.0, 2.0]]), {"extra": torch.tensor([[5]])})
    batch = (torch.tensor([[9.0, 9.0], [1.0, 2.0]]), {"extra": torch.tensor([[0], [5]])})
    assert compare(batch, alone, batch=2, row=1) == (True, 0.0, 0)
    equal, diff, ulps = compare(batch, alone, batch=2, row=0)
    assert not equal and diff == 8.0 and ulps > 0


def test_probe_slice_follows_batch_major_flattening() -> None:
    alone = torch.arange(6.0).reshape(3, 2)  # the probe's 3 tokens, flattened (batch * tokens, dim)
    batch = torch.cat([torch.zeros(3, 2), alone, torch.ones(3, 2)])  # batch 3, probe at row 1
    assert torch.equal(_probe_slice(batch, alone, batch=3, row=1), alone)
    assert _probe_slice(torch.zeros(4, 2), alone, batch=3, row=1) is None  # no dim is 3 x the alone extent
    weight = torch.randn(2, 2)
    assert _probe_slice(weight, weight, batch=3, row=1) is weight  # no batch dim: compared whole
