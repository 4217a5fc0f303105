"""Exercises and grading, apart from the lessons they serve.

Reading order
-------------
1. ``build``       writes exercises/ (the students' copies) from solutions/.
2. ``submission``  finds each student's notebook, reads it safely, and merges
                   only their answer cells into the instructor's notebook.
3. ``guard``       runs inside the student's kernel: puts back any function the
                   tests rely on (``np.allclose``) that the answers replaced.
4. ``execute``     runs the merged notebook in a fresh kernel, in its own
                   temporary folder, with per-cell and per-notebook time limits.
5. ``grade``       scores the test cells, writes the grades CSV and one feedback
                   file per student; ``python -m grader`` (``make grade``).
"""
