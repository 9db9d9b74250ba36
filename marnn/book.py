"""Execute the book's notebooks with papermill.

    python -m marnn.book execute --scale paper-2core --out book/generated [--threads N] [--only NAME ...] [--force]
    python -m marnn.book set-repository https://github.com/OWNER/NAME

Every notebook in ``notebooks/`` listed in :data:`NOTEBOOKS` runs, in that
order, in a kernel of the *current* interpreter (a ``marnn`` kernelspec
installed into ``sys.prefix`` at first use), with the papermill parameters
``scale`` and ``threads``. ``DIR/<name>.ipynb`` receives the executed copy,
also when a notebook fails, so the traceback can be read there; any failure
ends the command with a non-zero exit status.

A page is executed again only when one of its inputs changed since the copy in
``DIR`` was made: the notebook, the package's code (``marnn/**/*.py``), the
records of its scale in the result store, the paper's numbers, the Penn
Treebank files (``data/ptb/``: the files and their checksums) for a page that
reads them (:data:`PTB_PAGES`, :data:`MIXED_PAGES`) and the parameters. The
fingerprint of those inputs is kept in ``DIR/<name>.inputs.json`` (``--force``
ignores it).

The executed copy is edited for the book (:func:`_tidy`): every code cell's
source is folded (one click shows it), the parameters cells are removed, the
scale the page was built at is stated at the top (:func:`scale_admonition`)
and the per-page scale sentence at the bottom is dropped.

Notebooks call :func:`setup` in their first code cell.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import sys
import time
from pathlib import Path

from .paths import NOTEBOOKS as NOTEBOOK_DIR
from .paths import PTB_DATA
from .paths import REPO as ROOT

KERNEL_NAME = "marnn"

# Executed in this order; the book's _toc.yml points at book/generated/<name>.
NOTEBOOKS: list[str] = [
    # the landing page's table and figure (book/intro.md glues them from this page)
    "findings",
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

# Which records a page reads (for the scale admonition): formal languages, Penn Treebank or both.
PTB_PAGES = frozenset({"table3", "fig1"})
MIXED_PAGES = frozenset({"findings", "audit", "provenance"})

# Parameters that take a list of names. From the papermill command line they arrive as one
# string: ``-p tasks count-3,marked-copy`` or ``-p tasks '["count-3", "marked-copy"]'``;
# :func:`setup` turns either into a list (``-y 'tasks: [count-3, marked-copy]'`` gives one already).
LIST_PARAMETERS: tuple[str, ...] = ("tasks", "models", "modes", "ablation_models", "perturb_tasks",
                                    "perturb_models")


def as_list(value):
    """A list parameter as a list: ``None`` stays ``None``, a list or tuple stays as it is, and a
    string is a JSON list (``'["count-3", "marked-copy"]'``) or comma-separated names
    (``"count-3,marked-copy"``; one name gives a list of one).

    >>> as_list("count-3, marked-copy"), as_list('["lstm"]'), as_list(None)
    (['count-3', 'marked-copy'], ['lstm'], None)
    """
    if value is None or isinstance(value, (list, tuple)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a list parameter must be a list or a string of names, not {value!r}; "
                         "accepted: count-3,marked-copy or a JSON list [\"count-3\", \"marked-copy\"]")
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"list parameter {value!r} is not valid JSON ({exc.msg}); accepted: "
                             "count-3,marked-copy or [\"count-3\", \"marked-copy\"]") from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ValueError(f"list parameter {value!r} must be a JSON list of names")
        return parsed
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ValueError(f"list parameter {value!r} has an empty name; accepted: count-3,marked-copy")
    return names


def setup(threads: int = 1) -> None:
    """First cell of every notebook: thread limits, display options, plot style, list parameters.

    ``threads`` (the papermill parameter) must be an integer >= 1: anything else
    stops the notebook here, before any work, with one line saying so. List
    parameters of the calling notebook (:data:`LIST_PARAMETERS`) given as strings
    become lists (:func:`as_list`).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # for anything started from here on
    if "torch" in sys.modules:  # import torch only where a notebook needs it
        sys.modules["torch"].set_num_threads(threads)
    frame = inspect.currentframe()
    caller = frame.f_back.f_globals if frame is not None and frame.f_back is not None else {}
    for name in LIST_PARAMETERS:
        if isinstance(caller.get(name), str):
            caller[name] = as_list(caller[name])
    import pandas as pd

    pd.set_option("display.float_format", number)  # the paper's two decimals
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.width", 160)
    from .plotting import use_style

    use_style()
    _show_frames_for_readers()


def frame_html(df) -> str:
    """A DataFrame as the book shows it: numbers by :func:`number`, missing values as a dash,
    booleans as yes / no, and no column of row numbers (a default 0, 1, 2, ... index)."""
    import pandas as pd

    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_bool_dtype(shown[col]):
            shown[col] = shown[col].map({True: "yes", False: "no"})
        elif shown[col].dtype == object and shown[col].map(lambda v: isinstance(v, bool)).any():
            shown[col] = shown[col].map(lambda v: "yes" if v is True else "no" if v is False else v)
    plain = isinstance(shown.index, pd.RangeIndex) and shown.index.name is None
    return header_breaks(shown.to_html(na_rep="–", float_format=number, index=not plain, notebook=True,
                                       max_rows=pd.get_option("display.max_rows"),
                                       max_cols=pd.get_option("display.max_columns")))


def header_breaks(html: str) -> str:
    """Column headers of a table in ``html`` may break after ``_`` and ``/`` (a ``<wbr>``), never inside
    a word: the book's CSS (``book/_static/marnn.css``) keeps header words whole, so names like
    ``accuracy_first`` need these places to wrap and still fit the column.

    >>> header_breaks("<thead><tr><th>a_b/c</th><th>none</th></tr></thead><tbody><td>x_y</td></tbody>")
    '<thead><tr><th>a_<wbr>b/<wbr>c</th><th>none</th></tr></thead><tbody><td>x_y</td></tbody>'
    """
    def text(m: re.Match) -> str:
        return ">" + re.sub(r"([_/])(?=\S)", r"\1<wbr>", m.group(1)) + "<"

    return re.sub(r"<thead>.*?</thead>", lambda m: re.sub(r">([^<]+)<", text, m.group(0)), html, flags=re.S)


def _show_frames_for_readers() -> None:
    """In IPython: DataFrames display through :func:`frame_html`."""
    from .plotting import ipython_shell

    ip = ipython_shell()
    if ip is None:
        return
    import pandas as pd

    ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, frame_html)


def number(x: float) -> str:
    """A number in a table: two decimals (the paper's precision), three significant digits when
    that would print a non-zero value as 0.00 or a huge one in full.

    >>> number(0.91234), number(123.456), number(2.5e-05), number(0.0)
    ('0.91', '123.46', '2.5e-05', '0.00')
    """
    if x != x:  # NaN
        return "–"
    return f"{x:.2f}" if x == 0 or 0.005 <= abs(x) < 1e6 else f"{x:.3g}"


# ---- the scale, stated at the top of every page ---------------------------------------------
def scale_admonition(scale: str, kind: str = "formal") -> str:
    """A MyST admonition that names the scale a page was built at and how it differs from the
    paper's protocol. ``kind``: ``formal``, ``ptb`` or ``both`` (which part of the protocol the
    page's records come from)."""
    from .scales import PAPER, get_scale

    sc = get_scale(scale)
    if kind not in ("formal", "ptb", "both"):
        raise ValueError(f"unknown page kind {kind!r}; valid: formal, ptb, both")
    if sc.name == "paper":
        title = "Built at the paper's scale"
        body = ["The published protocol: the same lengths, bins, data sizes and restarts as the paper."]
    else:
        title = f"Built at the `{sc.name}` scale, not the paper's"
        body = []
        if kind in ("formal", "both"):
            ours = ", ".join(f"{lo}-{hi}" for lo, hi in sc.test_bins)
            theirs = ", ".join(f"{lo}-{hi}" for lo, hi in PAPER.test_bins)
            body.append(f"**Formal languages:** trained on lengths {sc.train_lengths[0]}-{sc.train_lengths[1]} "
                        f"(paper: {PAPER.train_lengths[0]}-{PAPER.train_lengths[1]}), {sc.train_size:,} strings "
                        f"(paper: {PAPER.train_size:,}), at most {sc.max_epochs} epochs (paper: "
                        f"{PAPER.max_epochs}), {sc.restarts} restarts (paper: {PAPER.restarts}); tested on "
                        f"{ours} (paper: {theirs})."
                        + (" Bins are compared by position (first, second, last), not by length."
                           if sc.test_bins != PAPER.test_bins else ""))
        if kind in ("ptb", "both"):
            tokens = f"{sc.ptb_train_tokens:,}" if sc.ptb_train_tokens else "all"
            body.append(f"**Penn Treebank:** {tokens} training tokens (paper: the whole corpus), at most "
                        f"{sc.ptb_max_epochs} epoch{'s' * (sc.ptb_max_epochs != 1)} (paper: {PAPER.ptb_max_epochs}), "
                        f"{sc.ptb_restarts} restart{'s' * (sc.ptb_restarts != 1)} (paper: {PAPER.ptb_restarts}): "
                        "a PTB comparison is decided only once our perplexities beat a unigram model "
                        "fitted on the same tokens, and says *cannot tell at this scale* before that.")
        cuts = sc.model_changes()
        if cuts:
            body.append("**Cut further for some models:** " + "; ".join(
                f"`{m}`: " + ", ".join(f"{k} {v}" for k, v in ch.items()) for m, ch in cuts.items()) + ".")
        if sc.name == "smoke":
            body.append("The `smoke` scale exists to test the pages: its numbers mean nothing.")
    return "\n".join([":::{admonition} " + title, ":class: note marnn-scale", "", "\n\n".join(body), ":::"])


# ---- the landing page's table -----------------------------------------------------------------
def findings_html(table, scale: str) -> str:
    """The audit's claims (``marnn.analysis.audit.table``) as one HTML table that fits the book's
    column: the claim and where the paper makes it, what the paper says, what its own tables give
    with the verdict on them, and what our runs at ``scale`` give with the verdict on those."""
    from html import escape

    from .scales import get_scale

    sc = get_scale(scale)
    head = ["The paper's claim", "The paper says", "Its own tables give",
            f"Our runs ({escape(sc.name)} scale)"]
    rows = []
    for _, r in table.iterrows():
        def cell(value, verdict):
            v = "" if value is None or str(value) in ("", "-", "nan") else escape(str(value))
            return (f"<td>{v}<div class='marnn-verdict'>{escape(str(verdict))}</div></td>" if verdict
                    else f"<td>{v}</td>")
        rows.append("<tr>"
                    f"<td>{escape(str(r['claim']))}<div class='marnn-source'>{escape(str(r['source']))}</div></td>"
                    f"<td>{escape(str(r['paper_value']))}</td>"
                    + cell(r["recomputed"], r["verdict"]) + cell(r["ours"], r["ours_verdict"]) + "</tr>")
    return ("<table class='marnn-findings'><colgroup><col style='width:28%'><col style='width:14%'>"
            "<col style='width:29%'><col style='width:29%'></colgroup><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


# ---- the repository address: one setting ------------------------------------------------------
CONFIG = ROOT / "book" / "_config.yml"
COLAB_DIR = "/content/marnn"
COLAB_CELL = '''import os
import subprocess
import sys

REPOSITORY = "{url}"  # book/_config.yml; change with: python -m marnn.book set-repository URL
if "google.colab" in sys.modules:  # Colab starts without marnn: clone it (package, paper's numbers, PTB, records)
    if not os.path.isdir("{dir}"):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, "{dir}"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{dir}[book]"], check=True)
    sys.path.insert(0, "{dir}")
    os.chdir("{dir}")'''


def repository_url() -> str:
    """The repository address: ``repository: url:`` in ``book/_config.yml`` (the one setting)."""
    import yaml

    return yaml.safe_load(CONFIG.read_text())["repository"]["url"]


def colab_cell(url: str | None = None) -> str:
    """The source of every notebook's hidden Colab cell for repository ``url``."""
    return COLAB_CELL.format(url=url or repository_url(), dir=COLAB_DIR)


def set_repository(url: str) -> list[str]:
    """Point the book at ``url``: ``book/_config.yml`` and the Colab cell of every notebook.
    Returns the files changed."""
    import re

    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"repository address {url!r} is not https://HOST/OWNER/NAME")
    changed = []
    text = CONFIG.read_text()
    new = re.sub(r"(?m)^(  url: )\S+", lambda m: m.group(1) + url, text, count=1)
    if new != text:
        _write_atomic(CONFIG, new)
        changed.append(str(CONFIG.relative_to(ROOT)))
    for name in NOTEBOOKS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "google.colab" in "".join(c["source"])]
        if not cells:
            raise SystemExit(f"{path} has no Colab cell (a code cell that tests 'google.colab')")
        source = colab_cell(url).splitlines(keepends=True)
        if cells[0]["source"] != source:
            cells[0]["source"] = source
            _write_atomic(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(str(path.relative_to(ROOT)))
    return changed


# ---- kernels ------------------------------------------------------------------------------
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


def _ipc_kernel_manager():
    """A kernel manager that talks to its kernel over local (IPC) sockets, not TCP: nothing
    leaves the machine, and the kernel has no reason to warn about unencrypted TCP. The kernel
    logs only critical messages (not the "KeyboardInterrupt caught" of its shutdown); errors in
    a cell still reach the notebook and fail the page. Each manager names its sockets after a
    path of its own (jupyter_client's default, ``kernel-ipc-<n>`` in the working directory,
    let two processes starting kernels at once in one directory take the same sockets: the
    kernel then gets the other one's messages, "Invalid Signature")."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = os.path.join(tempfile.gettempdir(), f"marnn-kernel-{uuid.uuid4().hex[:16]}")

        def format_kernel_cmd(self, extra_arguments=None):
            return [*super().format_kernel_cmd(extra_arguments), "--IPKernelApp.log_level=CRITICAL"]

    return IPCKernelManager


# ---- incremental builds -------------------------------------------------------------------
def _digest(paths, root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def fingerprint(name: str, scale: str, params: dict) -> dict[str, str]:
    """What an executed page depends on, one hash per input (compared key by key)."""
    from .paper import DATA as PAPER_CSV
    from .scales import get_scale
    from .store import results_dir

    sc = get_scale(scale).name
    store = results_dir()
    records = [p for kind in ("formal", "ptb") for p in (store / kind / sc).rglob("*")
               if p.is_file()] if store.is_dir() else []
    package = [p for p in (ROOT / "marnn").rglob("*.py") if "__pycache__" not in p.parts]
    data = [PAPER_CSV] if PAPER_CSV.is_file() else []
    prints = {
        "notebook": _digest([NOTEBOOK_DIR / f"{name}.ipynb"], ROOT),
        "package": _digest(package, ROOT),
        "records": _digest(records, store) if records else "none",
        "paper": _digest(data, ROOT) if data else "none",
        "parameters": json.dumps(params, sort_keys=True),
        "store": str(store.resolve()),
    }
    if name in PTB_PAGES | MIXED_PAGES:  # the corpus and its checksums (a page reads both through marnn.ptb)
        ptb = [p for p in PTB_DATA.rglob("*") if p.is_file()] if PTB_DATA.is_dir() else []
        prints["ptb"] = _digest(ptb, PTB_DATA) if ptb else "none"
    return prints


def _stamp(out: Path, name: str) -> Path:
    return out / f"{name}.inputs.json"


def up_to_date(name: str, out: Path, prints: dict[str, str]) -> bool:
    """True when ``out/<name>.ipynb`` was executed from exactly these inputs."""
    stamp = _stamp(out, name)
    if not stamp.is_file() or not (out / f"{name}.ipynb").is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == prints
    except json.JSONDecodeError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


TRAINING_SCALES = ("smoke", "quick")  # the scales at which executing a page may train what is missing


def execute(scale: str, out: str | Path, threads: int = 1,
            only: list[str] | None = None, force: bool = False) -> list[str]:
    """Run the notebooks whose inputs changed (all with ``force``); returns the names that failed."""
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
    # the book never trains at the scales whose runs take hours: a missing cell shows as not trained yet
    from .store import NO_TRAIN_ENV
    os.environ[NO_TRAIN_ENV] = "1" if scale not in TRAINING_SCALES else os.environ.get(NO_TRAIN_ENV, "")
    params: dict[str, object] = {"scale": scale, "threads": int(threads or 1)}
    kernel = None
    failed = []
    for i, name in enumerate(names, 1):
        src, dst = NOTEBOOK_DIR / f"{name}.ipynb", out / f"{name}.ipynb"
        if not force and up_to_date(name, out, fingerprint(name, scale, params)):
            print(f"[{i}/{len(names)}] {name}: inputs unchanged, kept {dst}", flush=True)
            continue
        print(f"[{i}/{len(names)}] {name} (scale={scale}) -> {dst}", flush=True)
        _stamp(out, name).unlink(missing_ok=True)
        kernel = kernel or kernel_name()
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(dst), parameters=params, kernel_name=kernel,
                                cwd=str(ROOT), progress_bar=False, log_output=False,
                                kernel_manager_class=_ipc_kernel_manager())
        except Exception as exc:  # noqa: BLE001 - report every notebook, then fail
            failed.append(name)
            print(f"      FAILED after {time.perf_counter() - start:.1f} s: "
                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
                  file=sys.stderr, flush=True)
            continue
        _tidy(src, dst, scale)
        # after the run: a page that computed missing records has them in its fingerprint
        _write_atomic(_stamp(out, name), json.dumps(fingerprint(name, scale, params), indent=1) + "\n")
        print(f"      done in {time.perf_counter() - start:.1f} s", flush=True)
    return failed


# ---- the executed copy, edited for the book ---------------------------------------------------
HIDE = {"remove-cell", "remove-input", "hide-input", "hide-cell"}


def _page_kind(name: str) -> str:
    return "ptb" if name in PTB_PAGES else "both" if name in MIXED_PAGES else "formal"


def _drop_sentences(cell: dict, sentences: list[str]) -> None:
    """Remove ``sentences`` from the markdown / text outputs of ``cell`` (the old bottom notes)."""
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        for mime in ("text/markdown", "text/plain"):
            if mime in data:
                text = "".join(data[mime]) if isinstance(data[mime], list) else data[mime]
                for s in sentences:
                    text = text.replace(s + " ", "").replace(s, "")
                data[mime] = text
    # an output that held only the note stays, empty (nbval compares the number of outputs)


def _tidy(src: Path, dst: Path, scale: str | None = None) -> None:
    """Edits to the executed copy for the book.

    * the source's kernelspec (python3) replaces papermill's, so the copy opens anywhere;
    * the parameters cells (the notebook's defaults and papermill's injected values) are
      removed (tag ``remove-cell``): the admonition states the scale;
    * every other code cell is folded (``hide-input``: one click shows the code) unless it
      already says how it is shown; the printed lines of the cell that calls ``setup`` are not
      shown (``remove-output``: the note at the top states the scale);
    * a note stating the scale (:func:`scale_admonition`) follows the title cell, and the
      per-page scale sentences (``report.scale_caveat`` / ``ptb_scale_caveat``) leave the outputs.
    """
    nb = json.loads(dst.read_text())
    spec = json.loads(src.read_text()).get("metadata", {}).get("kernelspec")
    if spec:
        nb.setdefault("metadata", {})["kernelspec"] = spec
    scale = scale or nb.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("scale")
    sentences: list[str] = []
    if scale:
        from .report import ptb_scale_caveat, scale_caveat

        sentences = [scale_caveat(scale), ptb_scale_caveat(scale)]
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            if "remove-cell" not in tags:
                tags.append("remove-cell")
        elif not HIDE & set(tags):
            tags.append("hide-input")
            # the setup cell's printed summary (scale, run counts) repeats the note at the top
            if "setup(threads)" in "".join(cell.get("source", "")) and cell.get("outputs") and \
                    all(o.get("output_type") == "stream" for o in cell["outputs"]):
                tags.append("remove-output")
        if sentences:
            _drop_sentences(cell, sentences)
    if scale and not any("marnn-scale" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]):
        first = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"), -1)
        note = {"cell_type": "markdown", "id": "marnn-scale", "metadata": {"tags": ["marnn-scale"]},
                "source": scale_admonition(scale, _page_kind(src.stem))}
        nb["cells"].insert(first + 1, note)
        if scale not in TRAINING_SCALES:  # the runs are trained elsewhere: how many this page has
            from .coverage import page_note

            count = page_note(src.stem, scale) if src.stem in NOTEBOOKS else None
            if count:
                nb["cells"].insert(first + 2, {"cell_type": "markdown", "id": "marnn-coverage",
                                               "metadata": {"tags": ["marnn-coverage"]}, "source": count})
            _drop_unglued(nb)
    _write_atomic(dst, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


GLUE_REF = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")


def _drop_unglued(nb: dict) -> None:
    """Remove the cells after a page stopped for runs not trained yet (:func:`marnn.coverage.require`),
    and the markdown cells that cite a glued value the page did not glue (a finding on cells not trained
    yet: its numbers do not exist, and a missing value would fail the build)."""
    from .coverage import STOP

    stop = next((i for i, c in enumerate(nb["cells"]) for o in c.get("outputs", [])
                 if o.get("metadata", {}).get(STOP)), None)
    if stop is not None:  # the cells below did nothing (marnn.coverage.require)
        nb["cells"] = nb["cells"][:stop + 1]
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name") for c in nb["cells"]
             for o in c.get("outputs", [])}
    nb["cells"] = [c for c in nb["cells"] if c["cell_type"] != "markdown"
                   or set(GLUE_REF.findall("".join(c["source"]))) <= glued]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marnn.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute the notebooks with papermill")
    ex.add_argument("--scale", required=True, help="smoke, quick, paper-2core or paper (marnn.scales)")
    ex.add_argument("--out", required=True, help="folder for the executed notebooks")
    ex.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per notebook (default 1)")
    ex.add_argument("--only", nargs="+", metavar="NAME", help=f"a subset of {NOTEBOOKS}")
    ex.add_argument("--force", action="store_true", help="execute every page, changed inputs or not")
    rep = sub.add_parser("set-repository", help="the repository address of the launch buttons and Colab cells")
    rep.add_argument("url", help="https://github.com/OWNER/NAME")
    args = parser.parse_args(argv)
    if args.command == "set-repository":
        changed = set_repository(args.url)
        print(f"{args.url}: {len(changed)} file(s) changed" + "".join(f"\n  {c}" for c in changed))
        return 0
    if args.threads < 1:
        parser.error(f"argument --threads: must be at least 1, got {args.threads}")
    from .registry import UnknownNameError
    start = time.perf_counter()
    try:  # execute checks the scale and the page names before any work
        failed = execute(args.scale, args.out, args.threads, args.only, force=args.force)
    except UnknownNameError as err:
        parser.error(f"argument --scale: {err}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"notebooks ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
