"""The Python blocks of README.md run as pasted, in order, in one fresh Python session.

A block is skipped only when its first line is ``# readme: not run (<why>)``: the
reason is then visible in the README itself, and ``JNMF_README_SLOW=1`` runs those blocks
too.  The session is a subprocess, as a user's would be (no pytest configuration such as
this suite's 64-bit mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_MARK = "# readme: not run ("

RUNNER = r"""
import os, re, sys, time
slow = os.environ.get("JNMF_README_SLOW") == "1"
text = open(sys.argv[1], encoding="utf-8").read()
for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
    line = text.count("\n", 0, match.start()) + 2
    block = match.group(1)
    if block.startswith("# readme: not run (") and not slow:
        print(f"skipped README.md line {line}", flush=True)
        continue
    start = time.perf_counter()
    exec(compile(block, f"README.md block at line {line}", "exec"), globals())
    print(f"ran README.md line {line} in {time.perf_counter() - start:.1f} s", flush=True)
"""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_python_blocks_run_as_pasted(tmp_path):
    readme = REPO / "README.md"
    blocks = python_blocks(readme.read_text(encoding="utf-8"))
    assert len(blocks) >= 5  # the runner finds the blocks the README shows
    skipped = [b.splitlines()[0] for b in blocks if b.startswith(SKIP_MARK)]
    assert all(line.endswith(")") and len(line) > len(SKIP_MARK) + 5 for line in skipped), skipped
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("JAX_ENABLE_X64", None)
    env["JNMF_NO_COMPILE_CACHE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(readme)],
        cwd=tmp_path,  # anything a block writes stays out of the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    ran = [line for line in result.stdout.splitlines() if line.startswith("ran README.md")]
    slow = os.environ.get("JNMF_README_SLOW") == "1"
    assert len(ran) == len(blocks) - (0 if slow else len(skipped)), result.stdout
