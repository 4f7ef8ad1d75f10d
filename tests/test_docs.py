"""Every ```python block of README.md and docs/*.md runs, standalone, as a reader would paste it.

Each block runs in its own interpreter in an empty temporary folder (so it must build its
own data), with a time limit. A block whose fence names a file (```` ```python my_scores.py ````)
is that file: it is written into the folder of every block of its page, not run. Pages are
found when the tests are collected, so a new page in docs/ is checked without touching this
file.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python(?:[ \t]+([\w./-]+\.py))?[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = list(FENCE.finditer(text))
        files = {m.group(1): m.group(2) for m in blocks if m.group(1)}
        for number, match in enumerate(blocks, start=1):
            if match.group(1):
                continue
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(match.group(2), files, id=f"{page.relative_to(ROOT)}:{line}#{number}")


BLOCKS = list(python_blocks())


def test_the_pages_have_python_blocks():
    assert len(BLOCKS) >= 5 and any("README.md" in b.id for b in BLOCKS)


@pytest.mark.parametrize("code, files", BLOCKS)
def test_python_block_runs(code, files, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
