"""Open an HTML report in headless Chromium: every image must load, every local link
must exist, and no script may fail. Also saves a screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHECK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
}, true);
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (i) {
    return !(i.complete && i.naturalWidth > 0);
  }).map(function (i) { return i.getAttribute('src'); });
  var out = document.createElement('pre');
  out.id = 'cnnvis-check';
  out.textContent = JSON.stringify({errors: window.__errors, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(*args: str, timeout: int = 120) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def local_targets(page: Path) -> list[str]:
    """The page's local src/href targets (no anchors, no URLs with a scheme)."""
    text = page.read_text()
    found = re.findall(r'(?:src|href)="([^"]+)"', text)
    return [html.unescape(t) for t in found if not re.match(r"^(#|[a-z]+:)", t)]


def check_page(page: Path, screenshot: Path | None = None) -> dict:
    """Problems of ``page`` as ``{"missing": [...], "errors": [...], "broken": [...]}``
    (all empty when the page is sound); saves a screenshot when asked."""
    page = Path(page).resolve()
    missing = [t for t in local_targets(page) if not (page.parent / t.split("#")[0]).exists()]
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text().replace("<head>", "<head>" + CHECK, 1))
    try:
        dom = _run("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    found = re.search(r'<pre id="cnnvis-check">(.*?)</pre>', dom, re.S)
    result = json.loads(html.unescape(found.group(1))) if found else {"errors": ["no load"]}
    result.setdefault("broken", [])
    if screenshot is not None:
        _run(f"--screenshot={Path(screenshot).resolve()}", "--window-size=1280,3000",
             page.as_uri())  # fmt: skip
    return {"missing": missing, **result}
