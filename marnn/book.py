"""Execute the book's notebooks with papermill.

    python -m marnn.book execute --scale quick --out book/generated [--threads N] [--only NAME ...]

Every notebook in ``notebooks/`` listed in :data:`NOTEBOOKS` runs, in that
order, in a kernel of the *current* interpreter (a ``marnn`` kernelspec
installed into ``sys.prefix`` at first use), with the papermill parameters
``scale`` and ``threads``. ``DIR/<name>.ipynb`` receives the executed copy,
also when a notebook fails, so the traceback can be read there; any failure
ends the command with a non-zero exit status.

Notebooks call :func:`setup` in their first code cell.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL_NAME = "marnn"

# Executed in this order; the book's _toc.yml points at book/generated/<name>.
NOTEBOOKS: list[str] = [
    "languages",
    # formal languages: overview and retention, one table per freeze mode, accuracy against length
    "table1", "table2", "table4", "table5", "table6", "table7", "fig2", "fig3",
    # Penn Treebank
    "table3", "fig1",
    # beyond the paper: its stability criteria measured, numeric precision, memory ability, its claims audited
    "stability", "precision", "memory", "audit",
    # where the numbers come from
    "provenance",
]


def setup(threads: int = 1) -> None:
    """First cell of every notebook: thread limits, display options, plot style.

    ``threads`` (the papermill parameter) must be an integer >= 1: anything else
    stops the notebook here, before any work, with one line saying so."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # for anything started from here on
    if "torch" in sys.modules:  # import torch only where a notebook needs it
        sys.modules["torch"].set_num_threads(threads)
    import pandas as pd

    pd.set_option("display.float_format", "{:.5g}".format)  # ~5 significant digits
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.width", 160)
    from .plotting import use_style

    use_style()


def kernel_name() -> str:
    """A kernelspec that starts ``sys.executable``; installed into ``sys.prefix`` if missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=f"Python (marnn, {Path(sys.prefix).name})",
            prefix=sys.prefix)
    return KERNEL_NAME


def execute(scale: str, out: str | Path, threads: int = 1,
            only: list[str] | None = None) -> list[str]:
    """Run the notebooks; returns the names that failed (empty when all ran)."""
    import papermill as pm

    from .scales import get_scale

    get_scale(scale)  # an unknown scale fails here, with the valid names
    names = list(only) if only else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise SystemExit(f"unknown notebook(s) {unknown}; valid: {', '.join(NOTEBOOKS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TQDM_DISABLE"] = "1"  # inherited by the kernels
    params: dict[str, object] = {"scale": scale, "threads": int(threads or 1)}
    kernel = kernel_name()
    failed = []
    for i, name in enumerate(names, 1):
        src, dst = NOTEBOOK_DIR / f"{name}.ipynb", out / f"{name}.ipynb"
        print(f"[{i}/{len(names)}] {name} (scale={scale}) -> {dst}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(dst), parameters=params, kernel_name=kernel,
                                cwd=str(ROOT), progress_bar=False, log_output=False)
        except Exception as exc:  # noqa: BLE001 - report every notebook, then fail
            failed.append(name)
            print(f"      FAILED after {time.perf_counter() - start:.1f} s: "
                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
                  file=sys.stderr, flush=True)
            continue
        _tidy(src, dst)
        print(f"      done in {time.perf_counter() - start:.1f} s", flush=True)
    return failed


def _tidy(src: Path, dst: Path) -> None:
    """Small edits to the executed copy for the book.

    * the source's kernelspec (python3) replaces papermill's, so the copy opens anywhere;
    * the default ``parameters`` cell is hidden in the book (tag ``remove-cell``):
      papermill's injected cell below it shows the values actually used.
    """
    nb = json.loads(dst.read_text())
    spec = json.loads(src.read_text()).get("metadata", {}).get("kernelspec")
    if spec:
        nb.setdefault("metadata", {})["kernelspec"] = spec
    if any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]):
        for cell in nb["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if "parameters" in tags and "remove-cell" not in tags:
                tags.append("remove-cell")
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marnn.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute the notebooks with papermill")
    ex.add_argument("--scale", required=True, help="smoke, quick or paper (marnn.scales)")
    ex.add_argument("--out", required=True, help="folder for the executed notebooks")
    ex.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per notebook (default 1)")
    ex.add_argument("--only", nargs="+", metavar="NAME", help=f"a subset of {NOTEBOOKS}")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"argument --threads: must be at least 1, got {args.threads}")
    start = time.perf_counter()
    failed = execute(args.scale, args.out, args.threads, args.only)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all notebooks executed in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
