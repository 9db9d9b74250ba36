"""Two small fixes to the pages the theme writes (a local Sphinx extension).

* Launch and source buttons of generated pages point at the committed
  notebooks. Notebook chapters are built from ``book/generated/<name>.ipynb``,
  executed copies that are not committed; their source is
  ``notebooks/<name>.ipynb``, so ``book/generated/`` becomes ``notebooks/``
  in every header-button URL.
* Identical ``<script>`` entries are written once. sphinx-thebe registers its
  inline configuration twice under Jupyter Book 1, and the second
  ``const THEBE_JS_URL`` is a JavaScript error on every page.
"""
from __future__ import annotations

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


def setup(app):
    # after sphinx-book-theme's launch / source buttons (priority 501)
    app.connect("html-page-context", _fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
