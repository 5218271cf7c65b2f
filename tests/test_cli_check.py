"""``ascend-bi check``: the table, the planted divergence located to its op and line, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ascend_compile.tools.check import compare, format_check, run_check, ulp_distance
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


def test_module_target_resolves_from_the_working_directory(tmp_path: Path) -> None:
    """``ascend-bi check mymodule:function`` finds ``mymodule.py`` in the folder it runs from, as
    ``python -m`` does, also as the installed console script (whose ``sys.path`` lacks that folder)."""
    (tmp_path / "cwd_target_module.py").write_text("def build():\n    raise RuntimeError('found me')\n")
    script = Path(sys.executable).parent / "ascend-bi"
    assert script.exists(), "pip install -e . installs the ascend-bi console script"
    result = subprocess.run([str(script), "check", "cwd_target_module:build"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "raised RuntimeError: found me" in result.stderr, result.stderr


def test_batch_dim_finds_a_sequence_first_models_batch() -> None:
    """With the batch on dim 1 the probe is a whole sequence and ascend_bi keeps its bits; read as dim 0 the
    'probe' would be one position, and a softmax over positions would change it for both backends."""
    target = load_target("tests.cli_targets.seq_first:target", batch_dim=1)
    result = run_check(target, {}, batch_sizes=(5, 8), draws=1)
    rows = {(r["mode"], r["batch"]): r for r in result["rows"]}
    assert result["invariant"] and all(rows[("ascend_bi", b)]["bitwise_equal"] for b in (5, 8))
    assert not all(rows[("torch.compile", b)]["bitwise_equal"] for b in (5, 8))  # negative control
    wrong = load_target("tests.cli_targets.seq_first:target")  # dim 0: positions taken for batch rows
    result = run_check(wrong, {}, batch_sizes=(5,), draws=1)
    assert not any(r["bitwise_equal"] for r in result["rows"])


def test_an_output_without_the_batch_on_its_dim_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "tests.cli_targets.seq_first:batch_first_in_sequence_first_out", "--batch-sizes", "3",
                 "--companions", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ascend-bi check: output tensor 0 has shape (6, 3, 4) in a batch of 3 and (6, 1, 4) alone: its "
                   "batch is not on dim 0; check compares the probe's row of every output (pass --batch-dim for a "
                   "model whose batch is elsewhere)")
    with pytest.raises(TargetError, match="batch on dim 2, but some have only 2 dims"):
        load_target("tests.cli_targets.rms_head:target", batch_dim=2)


def test_left_stock_lines_say_why() -> None:
    uncovered = [{"node": "addmm", "target": "aten.addmm.default", "source": "model.py:3",
                  "reason": "dtype float64: templates take float32, bfloat16, float16 only (aten.addmm.default left "
                            "stock)"}]
    text = format_check({"rows": [], "invariant": True, "uncovered_reductions": uncovered, "divergence": None})
    assert "left stock: addmm (aten.addmm.default): dtype float64: templates take float32" in text
