"""The tree passes its lint configuration (``[tool.ruff]`` in
pyproject.toml: pycodestyle, pyflakes, 79 columns)."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_ruff_check():
    out = subprocess.run([sys.executable, '-m', 'ruff', 'check', '.'],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
