"""The instructor's grader: builds exercises/ from solutions/ and grades a class's notebooks.

A tool of its own, beside the teaching library: nothing here is imported by
``course_lib``, and the only teaching code a submission's kernel sees is what
its test cells import. ``grader/README.md`` is the instructor's summary.

Reading order
-------------
1. ``build``       writes exercises/ (the students' copies) from solutions/.
2. ``submission``  finds each student's notebook, reads it safely, and merges
                   only their answer cells into the instructor's notebook.
3. ``guard``       runs inside the student's kernel: puts back any function the
                   tests rely on (``np.allclose``) that the answers replaced.
4. ``sandbox``     where a kernel runs: a bubblewrap sandbox per submission on
                   Linux (no network, no instructor files, its own PID
                   namespace), else the limited mode; ``limits`` sets its
                   memory, process and file-size limits.
5. ``execute``     runs the merged notebook in a fresh kernel, in its own
                   temporary folder, with per-cell and per-notebook time limits;
                   after a cell that stops the kernel, goes on in a fresh one.
6. ``grade``       scores the test cells, writes the grades CSV and one feedback
                   file per student; ``python -m grader`` (``make grade``).
7. ``csvsafe``     every CSV cell a spreadsheet would run as a formula gets a
                   ``'``; a student's feedback file stays in its folder.
8. ``gradebook``   with ``--roster``: each roster student's total, in Canvas's
                   gradebook import layout and a plain one.
9. ``similarity``  answers near-identical after renaming (to each other, the
                   model answer, ``course_lib``): ``similarity.csv``, for a
                   human to look at; it changes no grade.
10. ``manual``      the cells a person grades: the sheet to fill in (manual.csv)
                    and its points put back.
11. ``store``       the last run's grades, so that running again re-runs nothing
                    that has not changed.
"""
