"""Figures and widgets, one module per topic (``conv`` for lessons 1 and 2, ``distributed`` for 6 to 8).

The only package that imports matplotlib or ipywidgets. It only draws: what a
figure shows is computed by the lecture's modules or by ``course_lib.experiments``.
"""

INITIAL_NOTE = ("Starting values, printed once so the saved notebook shows them "
                "(the widget below updates as you move it):")


def print_initial(report: str) -> None:
    """Print a widget's starting report under ``INITIAL_NOTE``.

    A widget's own report redraws when a slider moves; this printed copy does
    not, so it says what it is.
    """
    print(INITIAL_NOTE)
    print(report)


def figure_png(fig, **savefig) -> bytes:
    """``fig`` as PNG bytes (80 dpi; ``savefig``: more of ``Figure.savefig``'s options), then closed:
    what a widget's ``Image`` shows when a slider redraws the figure."""
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **{"dpi": 80, **savefig})
    plt.close(fig)
    return buf.getvalue()


def figure_title(fig) -> str:
    """A figure's suptitle and its axes' titles, joined by "; ": what the figure shows, in words."""
    titles = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) is not None else []
    titles += [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "; ".join(t.replace("\n", " ") for t in titles if t)


def _titles_in_outputs() -> None:
    """In a Jupyter kernel, store each shown figure's ``figure_title`` in its output's metadata
    (``course_kit.title``): the course's website (``tools/site/conf.py``) makes it the image's
    alt text. Not the lecture; a no-op outside Jupyter's inline backend."""
    try:
        from matplotlib_inline import backend_inline
    except ImportError:
        return
    fetch = getattr(backend_inline, "_fetch_figure_metadata", None)
    if fetch is None or getattr(fetch, "course_kit", False):
        return

    def with_title(fig):
        meta, title = fetch(fig) or {}, figure_title(fig)
        return {**meta, "course_kit": {"title": title}} if title else (meta or None)
    with_title.course_kit = True
    backend_inline._fetch_figure_metadata = with_title


_titles_in_outputs()
