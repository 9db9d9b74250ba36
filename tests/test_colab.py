"""A page runs from an install outside the repository, as on Colab (slow: builds and installs).

Colab's hidden first cell clones the repository and installs the package from the clone
(``marnn.book.COLAB_CELL``). This test does the same without the network: it copies the
tracked files to a temporary folder (the "clone"), creates a fresh virtual environment, builds
and installs the package from the copy with ``pip install --no-deps -e``, and runs one page at
the smoke scale with papermill from a third directory. So that nothing is downloaded, the fresh
environment sees the already-installed dependencies (torch, pandas, ...) through a ``.pth``
line naming this interpreter's site-packages (pip and setuptools too: the venv is made
``--without-pip``); this interpreter's own ``marnn`` install is not
visible there (it is activated by a ``.pth`` hook, which a plain path line does not run).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def test_a_page_runs_from_an_install_outside_the_clone(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "clone"
    for f in _files(ROOT):
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, clone / f)
    venv = tmp_path / "venv"
    # --without-pip: pip and setuptools then come from the shared site-packages below, like every
    # other dependency (ensurepip's old setuptools cannot read this pyproject.toml)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_marnn_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MARNN_RESULTS", "VIRTUAL_ENV")}
    env["TQDM_DISABLE"] = "1"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-e", str(clone)], check=True, env=env, cwd=tmp_path)
    where = subprocess.run([str(py), "-c", "import marnn, marnn.store as s; print(marnn.__file__); "
                            "print(s.results_dir())"], capture_output=True, text=True, check=True,
                           env=env, cwd=tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(clone) and Path(where[1]) == clone / "results"
    records = sorted(p.relative_to(clone).as_posix() for p in (clone / "results").rglob("*") if p.is_file())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(py), "-m", "papermill", str(clone / "notebooks" / "table4.ipynb"), "out.ipynb",
                          "-p", "scale", "smoke", "-p", "tasks", "count-3,marked-copy", "-k", "python3",
                          "--no-progress-bar"], capture_output=True, text=True, env=env, cwd=elsewhere)
    assert run.returncode == 0, run.stderr[-3000:]
    nb = json.loads((elsewhere / "out.ipynb").read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = json.dumps(nb)
    assert "marked-copy" in text and "count-3" in text
    # the page found the paper's numbers and the committed smoke records: it trained nothing
    assert sorted(p.relative_to(clone).as_posix() for p in (clone / "results").rglob("*") if p.is_file()) == records
