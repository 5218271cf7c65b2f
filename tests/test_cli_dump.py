"""``ascend-bi dump``: the folder's files, the summary, the HTML view in a real browser, the trace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_compile.passes import PASS_NAMES

TARGETS = Path(__file__).parent / "cli_targets"
MIXED = TARGETS / "mixed.py"
Dump = tuple[subprocess.CompletedProcess[str], Path]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ascend_compile.tools.cli", *args],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent.parent,
                          env={k: v for k, v in os.environ.items() if k != "TORCH_TRACE"})


@pytest.fixture(scope="module")
def mixed_dump(tmp_path_factory: pytest.TempPathFactory) -> Dump:
    out = tmp_path_factory.mktemp("dump") / "out"
    return _run("dump", str(MIXED), "--out", str(out)), out


def _line(text: str) -> int:
    return next(i for i, line in enumerate(MIXED.read_text().splitlines(), start=1) if text in line)


def test_dump_folder_holds_every_pass_summary_and_html(mixed_dump: Dump) -> None:
    result, out = mixed_dump
    assert result.returncode == 1, result.stderr  # prod is left stock: not invariant by construction
    folder = out / "graph_000"
    names = {p.name for p in folder.iterdir()}
    for i, name in enumerate(PASS_NAMES):
        assert {f"{i:02d}_{name}.before.py", f"{i:02d}_{name}.after.py"} <= names
    assert {"summary.json", "graph.html"} <= names
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rewrites"]["fix_contiguity"] == 1 and not summary["batch_invariant"]
    (prod,) = summary["uncovered"]
    assert prod["target"] == "aten.prod.dim_int"
    assert prod["source"].startswith(f"{MIXED}:{_line('.prod(-1')} ")
    copies = {(c["operand"], c["inside_template"]): int(c["bytes_per_call"]) for c in summary["copies"]}
    assert copies[("arg0_1", True)] == 2 * 6 * 32 * 4  # mean over the middle dim: the template copies x
    assert copies[("slice_1", False)] == 2 * 16 * 4  # pooled[:, ::2] copied before the matmul
    plans = {p["op"]: p for p in summary["plans"]}
    assert plans["ascend_bi.mm.default"]["extents"] == {"k": "16", "n": "24"}
    assert plans["ascend_bi.mm.default"]["plan"]["num_chunks"] >= 1
    assert plans["ascend_bi.sum.default"]["plan"]["block"] >= 6
    assert f"left stock: prod (aten.prod.dim_int) at {MIXED}:{_line('.prod(-1')}" in result.stdout


def test_dump_writes_structured_trace_entries_tlparse_reads(mixed_dump: Dump,
                                                            tmp_path: Path) -> None:
    _, out = mixed_dump
    (log,) = (out / "torch_trace").glob("*.log")
    # Each entry is a glog-style line "V1128 06:56:19.070000 2529 file.py:88] {metadata}"; payloads
    # follow on tab-indented lines.
    heads = (re.match(r"^[VIWE]\d{4} [^\]]*\] (\{.*\})$", line) for line in log.read_text().splitlines())
    entries = [json.loads(m.group(1)) for m in heads if m]
    ours = {e["artifact"]["name"]: e for e in entries if e.get("artifact", {}).get("name", "").startswith("ascend_bi")}
    expected = {f"ascend_bi_graph_000_{i:02d}_{n}" for i, n in enumerate(PASS_NAMES)} | {
        "ascend_bi_graph_000_input_graph", "ascend_bi_graph_000_summary", "ascend_bi_graph_000_graph_html"}
    assert expected <= set(ours)
    assert all("frame_id" in e and e.get("has_payload") for e in ours.values())  # tied to Dynamo's compile
    if shutil.which("tlparse"):
        subprocess.run(["tlparse", str(log), "-o", str(tmp_path / "tl"), "--no-browser"], check=True,
                       capture_output=True, timeout=120)
        assert list((tmp_path / "tl").rglob("ascend_bi_graph_000_summary*.json"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")


def test_dump_html_opens_in_headless_chromium(mixed_dump: Dump,
                                              tmp_path: Path) -> None:
    chromium = _chromium()
    _, out = mixed_dump
    page = out / "graph_000" / "graph.html"
    source = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", source)  # self-contained: nothing to fetch
    nodes = source.count('<g class="node ')

    def browse(*args: str) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, text=True, timeout=120)

    dom = browse("--enable-logging=stderr", "--v=0", "--dump-dom")
    assert "Uncaught" not in dom.stderr, dom.stderr
    assert f'data-ready="{nodes}"' in dom.stdout  # the page's script ran to its end over every node
    assert re.search(r'<g class="node uncovered" id="node-prod"', dom.stdout)
    assert re.search(r'<g class="node copy" id="node-clone', dom.stdout)
    assert re.search(r'<g class="node rewritten copies" id="node-sum_default"', dom.stdout)
    shot = tmp_path / "graph.png"
    browse("--window-size=1400,1400", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_dump_of_a_fully_rewritten_module_target_is_invariant(tmp_path: Path) -> None:
    result = _run("dump", "tests.cli_targets.rms_head:target", "--out", str(tmp_path / "d"), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (graph,) = data["graphs"]
    assert data["batch_invariant"] and graph["uncovered"] == [] and graph["rewrites"]["rewrite_matmul"] == 1
    assert {"summary.json", "graph.html"} <= set(graph["files"])
    again = _run("dump", "tests.cli_targets.rms_head:target", "--out", str(tmp_path / "d"))
    assert again.returncode == 2 and "is not empty" in again.stderr
