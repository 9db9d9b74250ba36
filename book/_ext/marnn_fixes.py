"""Four small fixes to the pages the theme writes (a local Sphinx extension).

* Launch and source buttons of generated pages point at the committed
  notebooks. Notebook chapters are built from ``book/generated/<name>.ipynb``,
  executed copies that are not committed; their source is
  ``notebooks/<name>.ipynb``, so ``book/generated/`` becomes ``notebooks/``
  in every header-button URL.
* Identical ``<script>`` entries are written once. sphinx-thebe registers its
  inline configuration twice under Jupyter Book 1, and the second
  ``const THEBE_JS_URL`` is a JavaScript error on every page.
* A cell's figure caption (``mystnb: figure:`` metadata) wraps only the cell's
  image outputs. myst-nb 1.x wraps *every* display output of the cell, so a
  cell that prints a table before its figure got two figures with one name
  (a duplicate-target warning) and a caption under the table.
* An edit of ``_static/`` (the book's CSS) reaches the built book in an
  incremental build: Sphinx copies static files only when it writes a page, so
  a changed ``_static/`` marks the root page outdated.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

GENERATED = "book/generated/"
SOURCE = "notebooks/"


def _rewrite(buttons):
    for button in buttons:
        if isinstance(button.get("url"), str):
            button["url"] = button["url"].replace(GENERATED, SOURCE)
        _rewrite(button.get("buttons", []))


def _fix_page(app, pagename, templatename, context, doctree):
    if pagename.startswith("generated/"):
        _rewrite(context.get("header_buttons", []))
    scripts = context.get("script_files")
    if scripts:
        seen, unique = set(), []
        for js in scripts:
            # the same inline script comes as filename None or "" (sphinx-thebe)
            key = (getattr(js, "filename", js) or "", repr(sorted(getattr(js, "attributes", {}).items())))
            if key not in seen:
                seen.add(key)
                unique.append(js)
        scripts[:] = unique


def _figure_for_images_only():
    import myst_nb.sphinx_ as nb_sphinx

    original = nb_sphinx.create_figure_context
    if getattr(original, "marnn", False):
        return

    def create_figure_context(self, figure_options, line):
        # called from myst-nb's loop over a cell's outputs, which holds the output as ``output``
        output = sys._getframe(1).f_locals.get("output") or {}
        if figure_options and not any(k.startswith("image/") for k in output.get("data", {})):
            figure_options = None
        return original(self, figure_options, line)

    create_figure_context.marnn = True
    nb_sphinx.create_figure_context = create_figure_context


def _static_changed(app, env, added, changed, removed):
    digest = hashlib.sha256()
    for path in sorted((Path(app.srcdir) / "_static").rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    if getattr(env, "marnn_static", None) != digest.hexdigest():
        env.marnn_static = digest.hexdigest()
        return [app.config.root_doc] if app.config.root_doc in env.found_docs else []
    return []


def _no_figure_numbers(app, config):
    """``numfig: false`` as _config.yml says: sphinx-jupyterbook-latex, which Jupyter Book loads,
    turns it back on in its own config-inited handler; this one runs after it. Sphinx would number
    figures across the whole book (the Figure 2 page said "Fig. 9"); the pages name the paper's
    figures in their captions instead."""
    config.numfig = False


def setup(app):
    _figure_for_images_only()
    app.connect("config-inited", _no_figure_numbers, priority=900)
    app.connect("env-get-outdated", _static_changed)
    # after sphinx-book-theme's launch / source buttons (priority 501)
    app.connect("html-page-context", _fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
