"""Build the course website (`make site`): README, lessons, exercises and docs as static HTML.

    python tools/build_site.py [OUT]        # default OUT: site/

Sphinx + MyST-NB with the configuration in tools/site/conf.py. Notebooks are rendered from their
committed outputs (nothing is executed) and nothing is fetched from the network, neither while
building nor when the pages are viewed. Any Sphinx warning (a broken link, a missing page) fails
the build. Prints the time taken, the number of pages and the size.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "tools" / "site"


def build(out: Path) -> float:
    """Build the site into ``out`` (a previous site there is replaced whole); return the seconds taken.

    Sphinx writes into a scratch folder beside ``out`` (its doctrees, and MyST-NB's
    ``jupyter_execute/``, which goes beside the output folder), renamed to ``out`` at the end.
    """
    from sphinx.cmd.build import build_main

    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise SystemExit(f"{out} exists and is not a site built by Sphinx: not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".site-build-", dir=out.parent) as scratch:
        html = Path(scratch) / "html"
        status = build_main(["-b", "html", "-E", "-q", "-W", "--keep-going", "-c", str(CONF),
                             "-d", str(Path(scratch) / "doctrees"), str(ROOT), str(html)])
        if status:
            raise SystemExit(f"the site build failed (Sphinx exit status {status}); see the warnings above")
        if out.exists():
            shutil.rmtree(out)
        html.rename(out)
    return time.perf_counter() - start


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "site"), help="output folder (default: site/)")
    out = Path(parser.parse_args(argv).out).resolve()
    seconds = build(out)
    pages = sum(1 for _ in out.rglob("*.html"))
    print(f"site: {pages} pages, {size_mb(out):.0f} MiB in {out} ({seconds:.1f} s); "
          f"view it with: python -m http.server -d {out} 8000")


if __name__ == "__main__":
    sys.exit(main())
