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
