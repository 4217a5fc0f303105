"""One way to show a table: rows of results -> a pandas DataFrame.

In JupyterLab a DataFrame renders as the rich HTML table users expect; in a
terminal, in a test or under nbval it is plain text (``print(df)`` or
``df.to_string()``). Every table in the lessons goes through ``table``, so
they all look alike: one row per result, the unit in the column's header
("time (ms)"), numbers rounded to what the measurement supports.
"""

from __future__ import annotations

import pandas as pd


def table(rows, columns: dict[str, str] | None = None, digits: int | dict[str, int] = 3,
          index: str | None = None) -> pd.DataFrame:
    """A DataFrame of ``rows`` (dicts, one per row), ready to display.

    Parameters
    ----------
    rows : list of dicts, or a list of tuples with ``columns`` naming their fields in order
    columns : ``{key: header}``, in display order; keys not named are left out.
        None keeps every key as its own header.
    digits : decimals kept for float columns: one number for all, or ``{header: digits}``
        (headers not named are not rounded)
    index : a header to use as the row labels (e.g. the layer's name), or None for 0, 1, ...

    >>> table([{"P": 2, "t": 0.12345}], {"P": "P", "t": "time (s)"}, digits=2)
       P  time (s)
    0  2      0.12
    """
    rows = list(rows)
    if columns is not None and rows and not isinstance(rows[0], dict):
        rows = [dict(zip(columns, row)) for row in rows]
    frame = pd.DataFrame(rows)
    if columns is not None:
        missing = [key for key in columns if key not in frame.columns and rows]
        if missing:
            raise KeyError(f"rows have no {missing}; they have {list(frame.columns)}")
        frame = frame.reindex(columns=list(columns)).rename(columns=columns)
    frame = frame.round(digits)
    return frame.set_index(index) if index is not None else frame
