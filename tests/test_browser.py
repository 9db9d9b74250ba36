"""Open every page of the built book in headless Chromium and check it renders.

    python -m pytest -m browser tests/test_browser.py     (after `make book`)

The book in ``book/_build/html`` is served on 127.0.0.1 by a thread; each page
fails on an image that did not load, math that MathJax did not typeset (or raw
TeX / MyST roles left in the text), an internal link whose target does not
answer 200, a resource fetched from another host (the book must work offline),
or a severe console error. It also checks what a reader sees at a 1400 px
window: no table wider than the text column, no table header broken inside a
word, every figure of a chapter inside a captioned ``<figure>`` (unnumbered: a
page that redraws the paper's Figure N says "Figure N" in its caption), no code
visible before a click, and (on every
executed chapter) the note stating the scale above the fold. Screenshots of
some pages go to ``build/screenshots/`` (kept) for a human to look at; they are
not compared.

Uses the Debian packages ``chromium`` and ``chromium-driver`` and never lets
Selenium download anything. Without them (or without a built book) the tests
skip, unless ``MARNN_REQUIRE_BROWSER=1`` (set in CI), where they fail.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
# the built book to check: $MARNN_BOOK_HTML (make test points it at the smoke build), else book/_build/html
HTML = Path(os.environ.get("MARNN_BOOK_HTML") or ROOT / "book" / "_build" / "html").resolve()
SCREENSHOTS = ROOT / "build" / "screenshots"
SHOT_PAGES = {"generated/findings.html": "landing", "intro.html": "intro",
              "generated/languages.html": "languages", "generated/fig2.html": "fig2",
              "generated/table1.html": "table1", "generated/table3.html": "table3",
              "generated/stability.html": "stability",
              "generated/precision.html": "precision", "generated/memory.html": "memory",
              "generated/audit.html": "audit"}
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 30  # seconds for a page, its images and MathJax


def _pages() -> list[str]:
    if not HTML.is_dir():
        return []
    skip = {"_static", "_sources", "_images"}
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if not skip & set(p.relative_to(HTML).parts))


PAGES = _pages()


def _unavailable(reason: str):
    """Skip locally; fail where the browser check is required (CI)."""
    if os.environ.get("MARNN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (MARNN_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def site():
    """Base URL of the book, served from a background thread."""
    if not (HTML / "intro.html").exists():
        _unavailable(f"no built book in {HTML}; run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def driver():
    binary = next((b for b in CHROMIUM if Path(b).exists()), None)
    if binary is None or not Path(CHROMEDRIVER).exists():
        _unavailable("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager go online
    profile = tempfile.mkdtemp(prefix="marnn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--disable-extensions",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(TIMEOUT)
    drv.set_script_timeout(TIMEOUT)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


@functools.cache
def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


# Waits for the page's images and, where MathJax is loaded, for its typesetting;
# then reports what the checks need.
INSPECT = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { if (i.loading === "lazy") i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); })));
  const hasMath = document.querySelector(".math") !== null;
  let mathjax = "absent";
  if (window.MathJax !== undefined) {
    const t0 = Date.now();
    while (!(window.MathJax.startup && window.MathJax.startup.promise) && Date.now() - t0 < 20000)
      await new Promise(r => setTimeout(r, 50));
    if (window.MathJax.startup && window.MathJax.startup.promise) {
      try { await window.MathJax.startup.promise; mathjax = "typeset"; }
      catch (e) { mathjax = "error: " + e; }
    } else { mathjax = "never started"; }
  }
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight, textarea")
       .forEach(e => e.remove());
  const math = Array.from(document.querySelectorAll(".math"));
  done({
    mathjax: mathjax,
    hasMath: hasMath,
    untypeset: math.filter(e => !e.querySelector("mjx-container")).map(e => e.textContent.slice(0, 80)),
    merrors: Array.from(document.querySelectorAll("mjx-merror")).map(e => e.textContent.slice(0, 80)),
    text: clone.textContent,
    brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src),
    links: Array.from(document.querySelectorAll("a[href], link[href], script[src], img[src]"))
                .map(e => e.href || e.src),
    resources: performance.getEntriesByType("resource").map(e => e.name),
  });
})();
"""

# What a reader sees: measured in the rendered page at the 1400 x 1000 window.
READER = r"""
const article = document.querySelector("article.bd-article") || document.querySelector("main");
const style = getComputedStyle(article);
const column = article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const visible = e => !e.closest("details:not([open])") &&
  (e.checkVisibility ? e.checkVisibility({visibilityProperty: true}) : !!e.getClientRects().length);
const tables = Array.from(article.querySelectorAll("table")).filter(visible)
  .map(t => ({width: Math.ceil(t.scrollWidth),
    head: Array.from(t.querySelectorAll("thead th, tr:first-child th, tr:first-child td"))
      .map(c => c.textContent.trim()).filter(x => x).join(" | ").slice(0, 80)}))
  .filter(t => t.width > column + 1);
const images = Array.from(article.querySelectorAll(".cell_output img, figure img")).filter(visible);
const uncaptioned = images.filter(i => { const f = i.closest("figure");
  return !(f && f.querySelector("figcaption")); })
  .map(i => i.src.split("/").pop());
const captions = Array.from(article.querySelectorAll("figure figcaption")).filter(visible)
  .map(c => c.textContent.trim());
const numbers = Array.from(article.querySelectorAll("figcaption .caption-number")).map(c => c.textContent.trim());
// a header word (between spaces, hyphens, "_" and "/") whose characters sit on more than one line is broken
const broken = [];
for (const th of Array.from(article.querySelectorAll("table thead th")).filter(visible)) {
  const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const m of node.textContent.matchAll(/[^\s\-_\/]+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0)
        .map(r => Math.round(r.top)));
      if (tops.size > 1) broken.push(m[0]);
    }
  }
}
const code = Array.from(article.querySelectorAll(".cell_input")).filter(visible).length;
const note = article.querySelector(".admonition.marnn-scale");
return {column: column, wide: tables, uncaptioned: uncaptioned, captions: captions, numbers: numbers,
        broken: broken, code: code,
        scaleTop: note ? note.getBoundingClientRect().top : null, fold: window.innerHeight};
"""

RAW_TEX = ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{", "\\frac", "\\mathrm")
RAW_MYST = ("{glue:", "{doc}`", "{ref}`", "{eq}`", "{math}`", ":::")


@pytest.mark.parametrize("page", PAGES or [None])
def test_page_renders(page, site, driver):
    if page is None:
        _unavailable(f"no pages in {HTML}; run `make book` first")
    url = urljoin(site, page)
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(url)
    info = driver.execute_async_script(INSPECT)
    problems: list[str] = []

    # images
    problems += [f"image did not load: {src}" for src in info["brokenImages"]]

    # math: every .math element typeset, no TeX errors, no raw TeX / MyST left in the text
    if info["hasMath"]:
        if info["mathjax"] != "typeset":
            problems.append(f"MathJax state: {info['mathjax']}")
        problems += [f"math not typeset: {t!r}" for t in info["untypeset"]]
    problems += [f"MathJax error: {t!r}" for t in info["merrors"]]
    problems += [f"raw TeX {tok!r} in page text" for tok in RAW_TEX if tok in info["text"]]
    problems += [f"unrendered MyST {tok!r} in page text" for tok in RAW_MYST if tok in info["text"]]

    # offline: nothing fetched from another host
    host = urlparse(site).netloc
    problems += [f"external resource loaded: {r}" for r in info["resources"]
                 if urlparse(r).scheme in ("http", "https") and urlparse(r).netloc != host]

    # internal links: the target file must exist on the server
    for link in sorted(set(info["links"])):
        target, _ = urldefrag(link)
        if urlparse(target).netloc == host and _status(target) != 200:
            problems.append(f"broken internal link: {target} (HTTP {_status(target)})")

    # console
    for entry in driver.get_log("browser"):
        if entry.get("level") == "SEVERE" and "favicon.ico" not in entry.get("message", ""):
            problems.append(f"console: {entry['message'][:300]}")

    # what a reader sees
    driver.execute_script("window.scrollTo(0, 0)")
    seen = driver.execute_script(READER)
    problems += [f"table [{t['head']}] is {t['width']} px wide in a {seen['column']} px column"
                 for t in seen["wide"]]
    problems += [f"table header word broken across lines: {w!r}" for w in seen["broken"]]
    problems += [f"figure without a caption: {src}" for src in seen["uncaptioned"]]
    problems += [f"figure numbered by the book ({n!r}), not by the paper" for n in seen["numbers"]]
    paper_figure = re.fullmatch(r"generated/fig(\d)\.html", page)
    if paper_figure:
        problems += [f"caption does not name the paper's Figure {paper_figure.group(1)}: {c[:60]!r}"
                     for c in seen["captions"] if not c.startswith(f"Figure {paper_figure.group(1)} ")]
    if seen["code"]:
        problems.append(f"{seen['code']} code cell(s) visible without a click")
    if page.startswith("generated/"):
        if seen["scaleTop"] is None:
            problems.append("no note stating the scale")
        elif seen["scaleTop"] > seen["fold"]:
            problems.append(f"the scale note starts at {seen['scaleTop']:.0f} px, below the fold ({seen['fold']} px)")

    if page in SHOT_PAGES:
        _screenshots(driver, SHOT_PAGES[page])
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def _screenshots(driver, name: str) -> None:
    """The top of the page (1400 x 1000), the whole page (1400 wide, up to 8000 px tall) and its
    first large figure, for a human to look at."""
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(8000, height + 200))
    driver.save_screenshot(str(SCREENSHOTS / f"{name}-page.png"))
    driver.set_window_size(size["width"], size["height"])
    figures = [e for e in driver.find_elements(By.CSS_SELECTOR, "main img") if e.size["height"] > 200]
    if figures:
        size = driver.get_window_size()
        driver.set_window_size(size["width"], min(6000, figures[0].size["height"] + 400))
        driver.execute_script("arguments[0].scrollIntoView()", figures[0])
        figures[0].screenshot(str(SCREENSHOTS / f"{name}-figure.png"))
        driver.set_window_size(size["width"], size["height"])
