"""What a student would try on each exercise part: one module per exercise, ``<exercise stem>.py``.

Each module defines ``PARTS``: answer cell ``grade_id`` -> dict with

* ``tests``: the test cells (grade ids) that grade this part;
* ``nearest``: the library or lesson functions nearest to the answer
  (``"course_lib.conv.im2col"``): what a student would reach for;
* ``copy``: an answer that only calls or wraps ``nearest`` (source of the
  whole answer cell): it must score 0 on this part;
* ``wrong``: at least two ``(answer source, message fragment)`` pairs, each
  a realistic mistake (off-by-one padding, eps inside the square root); the
  part's tests must fail with a message that contains the fragment (which
  names the misconception and the lesson section), and quote no hidden test.

``tests/test_exercise_cases.py`` grades every case with the real grader.
"""
