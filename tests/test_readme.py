"""The README's commands, as a newcomer runs them: copied from the README itself, so the two cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def readme_command(*words: str) -> str:
    """The one shell line of the README's ``bash`` blocks that holds every one of ``words``."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, f"the README should show one command with {words}, found {lines}"
    return lines[0]


def test_readme_names_its_two_commands() -> None:
    assert readme_command("pip install", "ascend-bi demo")
    assert readme_command("pip install", "pytest").endswith("&& pytest")


@pytest.mark.slow
def test_readme_demo_command_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """A fresh virtual environment with nothing but what the README's first command installs runs the demo."""
    command = readme_command("pip install", "ascend-bi demo")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert Path(sys.executable).parent != env_dir / "bin"
    table = result.stdout  # exit 0 already says every ascend_bi row kept its bits; the table must show it
    compiled = [line.split() for line in table.splitlines() if line.startswith("ascend_bi ")]
    stock = [line.split() for line in table.splitlines() if line.startswith("torch.compile ")]
    assert compiled and all("yes" in row for row in compiled), table
    assert stock and any("NO" in row for row in stock), table  # the negative control, in the same table
