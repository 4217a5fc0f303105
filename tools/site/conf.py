"""Sphinx configuration of the course website (`make site`; the doc: docs/instructors.md, "Publish the site").

The source folder is the repository root; only the pages below are read. The site is offline:
the lessons are rendered from their stored outputs (never executed), MathJax comes from the
pip package ``jupyter-server-mathjax`` and the widget renderer is vendored in ``_static/``, so
no page loads anything from another host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

from docutils import nodes

import jupyter_server_mathjax

ROOT = Path(__file__).resolve().parents[2]

project = "Practical Deep Learning Systems Performance: lecture 5 course kit"
author = "the course team"
copyright = "the course team"

extensions = ["myst_nb", "sphinx.ext.mathjax"]

root_doc = "README"             # the README is the home page; index.html redirects to it
include_patterns = ["README.md", "notebooks/[0-9][0-9]_*.ipynb", "exercises/*.ipynb", "docs/*.md",
                    "CONTRIBUTING.md", "grader/README.md"]
# folders pruned from the walk (nothing in them is a page; .venv alone has tens of thousands of files)
exclude_patterns = [".venv", ".git", "_build", "site", ".site-build-*", "build", "grades", "screenshots",
                    "**/.ipynb_checkpoints"]

# --- notebooks: their committed outputs, as they are ------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4          # README.md#exercises and the docs' #section links, GitHub's slugs
# The widget state saved in a lesson, drawn by the vendored @jupyter-widgets/html-manager
# (no require.js, no CDN); a widget that has no saved state keeps the static outputs beside it.
nb_ipywidgets_js = {"jupyter-widgets/embed.js": {}}

# --- math: MathJax 2.7 from the pip package jupyter-server-mathjax, copied into _static/mathjax
MATHJAX_SOURCE = Path(jupyter_server_mathjax.__file__).parent / "static"
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "tex2jax": {"processEscapes": True, "ignoreClass": "document", "processClass": "math|output_area"},
    # STIX-Web fonts from the package; MathJax's font-loading probe reads url('about:blank'), which
    # Chrome reports as a console error: a local() source that never exists probes the same way.
    "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None,
                 "styles": {"@font-face": {"font-family": "MathJax_Blank", "src": "local('MathJax_Blank')"}}},
    "menuSettings": {"zoom": "None"},
    "showMathMenu": False,
    "messageStyle": "none",
}

# --- the page ----------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "DL Systems Performance, lecture 5"
html_static_path = ["_static"]
templates_path = ["_templates"]
html_additional_pages = {"index": "redirect.html"}
html_context = {"root_page": "README.html", "default_mode": "light"}   # the figures are on white
html_copy_source = True            # _sources/: each page's notebook, for the download button
html_sourcelink_suffix = ""
html_theme_options = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None

# Navigation in the lessons' order: a hidden table of contents appended to the README while it is
# read (the README itself stays plain Markdown for GitHub).
NAV = [
    ("Lessons", sorted(f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))),
    ("Exercises", sorted(f"exercises/{p.stem}" for p in (ROOT / "exercises").glob("*.ipynb"))),
    ("For instructors and contributors",
     ["docs/instructors", "docs/benchmarks", "docs/multinode", "grader/README", "CONTRIBUTING"]),
]


def _toctrees() -> str:
    return "".join(f"\n\n```{{toctree}}\n:hidden:\n:caption: {caption}\n:maxdepth: 1\n\n" + "\n".join(docs) + "\n```\n"
                   for caption, docs in NAV)


def _add_navigation(app, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc:
        source[0] += _toctrees()


def _copy_mathjax(app, exception) -> None:
    """MathJax 2.7's files (no translations: the site is in English) into the built _static/."""
    if exception is None and app.builder.format == "html":
        shutil.copytree(MATHJAX_SOURCE, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("localization", "*.eot", "*.otf", "*.svg"))


def _figure_alt_texts(app, doctree) -> None:
    """Each notebook figure's alt text: the titles its kernel stored with it (``course_lib.viz.figure_title``,
    output metadata ``course_kit.title``), matched by the image's content hash, the name MyST-NB gives its file."""
    path = Path(app.env.doc2path(app.env.docname))
    if path.suffix != ".ipynb":
        return
    titles = {}
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            title = ((output.get("metadata") or {}).get("course_kit") or {}).get("title")
            png = output.get("data", {}).get("image/png")
            if title and png:
                titles[hashlib.sha256(base64.b64decode(png)).hexdigest()] = title
    for node in doctree.findall(nodes.image):
        title = titles.get(Path(node["uri"]).stem)
        if title:
            node["alt"] = f"Figure: {title}"


def setup(app):
    app.connect("source-read", _add_navigation)
    app.connect("doctree-read", _figure_alt_texts)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
