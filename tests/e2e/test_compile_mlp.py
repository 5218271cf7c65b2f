"""torch.compile(model, backend="ascend_bi") on MLPs: bitwise invariance, accuracy, controls."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import ascend_compile
from ascend_compile.passes import PASS_NAMES
from tests.helpers import all_bitwise_equal, rel_error, rows_in_batches

D_IN, HIDDEN, D_OUT = 256, 320, 96


def mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_OUT, bias=False)
    ).to(dtype).eval()


# Input forms: a row of a 2-D batch, a sequence of a 3-D batch, a row of a column-major batch.
FORMS = {
    "2d": ((1, D_IN), lambda fn: fn),
    "3d": ((1, 3, D_IN), lambda fn: fn),
    "transposed": ((1, D_IN), lambda fn: (lambda x: fn(x.t().contiguous().t()))),
}


def _check(fn, dtype: torch.dtype, form: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    shape, wrap = FORMS[form]
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        return rows_in_batches(wrap(fn), probe)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("executor", ["inductor", "fx"])
def test_rows_are_bitwise_equal_in_any_batch(executor: str, dtype: torch.dtype, form: str) -> None:
    model = mlp(dtype)
    compiled = torch.compile(model, backend="ascend_bi", options={"executor": executor, "strict": True}, dynamic=True)
    alone, placed = _check(compiled, dtype, form)
    assert all_bitwise_equal(alone, placed)
    shape, _ = FORMS[form]
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        ref = mlp(dtype).double()(probe.double())[0]
    assert rel_error(alone, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("form", list(FORMS))
def test_stock_torch_compile_differs(form: str) -> None:
    """Negative control (fp32; on CPU, oneDNN's bf16 matmul happens to be invariant, see GPU tests)."""
    alone, placed = _check(torch.compile(mlp(torch.float32), dynamic=True), torch.float32, form)
    assert not all_bitwise_equal(alone, placed)


def test_eager_mode_is_invariant_and_plain_eager_is_not() -> None:
    model = mlp(torch.float32)
    with ascend_compile.eager_mode():
        alone, placed = _check(model, torch.float32, "2d")
    assert all_bitwise_equal(alone, placed)
    alone, placed = _check(model, torch.float32, "2d")
    assert not all_bitwise_equal(alone, placed)


def test_eager_mode_rejects_dtypes_without_a_template() -> None:
    with ascend_compile.eager_mode(), pytest.raises(TypeError, match="aten.mm on dtypes.*float64"):
        torch.mm(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    torch.mm(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))  # restored on exit


def test_fresh_process_finds_the_backend_by_name() -> None:
    script = textwrap.dedent("""
        import sys, torch
        model = torch.nn.Linear(64, 8)
        with torch.no_grad():
            out = torch.compile(model, backend="ascend_bi")(torch.randn(3, 64))
        from ascend_compile import reports
        assert "ascend_compile" in sys.modules and reports()[-1].rewrites["rewrite_matmul"] == 1
        print("ok", tuple(out.shape))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ok (3, 8)" in result.stdout


def test_unsupported_matmul_strict_names_the_node_lenient_reports_it(caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(16, 4).double()
    x = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(Exception, match=r"addmm.*float64.*test_compile_mlp|order-sensitive"):
        torch.compile(model, backend="ascend_bi", options={"strict": True})(x)
    torch._dynamo.reset()
    ascend_compile.clear_reports()
    with torch.no_grad():
        out = torch.compile(model, backend="ascend_bi")(x)
    torch.testing.assert_close(out, model(x))
    (report,) = ascend_compile.reports()
    assert not report.batch_invariant
    assert [u.target for u in report.uncovered] == ["aten.addmm.default"]
    assert "torch.nn.modules.linear.Linear" in report.uncovered[0].source  # the module that made it
    assert "not batch-invariant" in caplog.text


def test_backward_graphs_are_refused_clearly() -> None:
    model = torch.nn.Linear(8, 4)
    with pytest.raises(Exception, match="inference graphs only"):
        torch.compile(model, backend="ascend_bi")(torch.randn(2, 8))


def test_unknown_option_is_a_value_error_naming_it() -> None:
    with torch.no_grad(), pytest.raises(Exception, match=r"unknown option 'stric'.*accepted options"):
        torch.compile(torch.nn.Linear(4, 4), backend="ascend_bi", options={"stric": True})(torch.randn(1, 4))


def test_dump_dir_holds_every_pass_and_a_summary(tmp_path) -> None:
    with torch.no_grad():
        torch.compile(mlp(torch.float32), backend="ascend_bi",
                      options={"dump_dir": str(tmp_path), "executor": "fx"})(torch.randn(2, D_IN))
    (folder,) = tmp_path.iterdir()
    names = sorted(p.name for p in folder.iterdir())
    assert "summary.json" in names
    for i, name in enumerate(PASS_NAMES):
        assert f"{i:02d}_{name}.before.py" in names and f"{i:02d}_{name}.after.py" in names
    position = PASS_NAMES.index("rewrite_matmul")
    assert "ascend_bi.mm" in (folder / f"{position:02d}_rewrite_matmul.after.py").read_text()


def test_eager_mode_covers_mean_and_softmax() -> None:
    """mean over long rows differs with the batch in stock eager (CPU; for some data); never in
    eager mode."""
    probes = [torch.randn(1, 65536, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with ascend_compile.eager_mode():
        assert all(all_bitwise_equal(*rows_in_batches(lambda x: x.mean(-1), p)) for p in probes)
        torch.testing.assert_close(torch.log_softmax(probes[0], -1), torch.ops.ascend_bi.softmax(probes[0], -1, True))
    assert any(not all_bitwise_equal(*rows_in_batches(lambda x: x.mean(-1), p)) for p in probes)


def test_eager_mode_refuses_a_device_the_machine_lacks() -> None:
    absent = next(k for k in ("cuda", "npu") if k not in ascend_compile.devices.present_kinds())
    with pytest.raises(RuntimeError, match=f"no '{absent}' device; present device types: .*cpu"):
        with ascend_compile.eager_mode(absent):
            pass


def test_eager_mode_warns_when_nothing_ran_on_its_device() -> None:
    """Tensors on another device than the block's run stock kernels: the block says so when it ends."""
    with pytest.warns(UserWarning, match=r"eager mode \(cpu\): no aten mm.*ran on cpu"):
        with ascend_compile.eager_mode("cpu"):
            torch.ones(3) + 1  # no overridden op
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ascend_compile.eager_mode("cpu"):
            torch.ones(2, 2) @ torch.ones(2, 2)


def test_reports_are_empty_until_something_compiles() -> None:
    ascend_compile.clear_reports()
    with ascend_compile.eager_mode("cpu"):
        torch.ones(2, 2) @ torch.ones(2, 2)
    assert ascend_compile.reports() == []
