"""``python -m course_lib.grade SOLUTION SUBMISSIONS``: the instructor's grader.

The code lives in ``course_lib.grading.grade`` (run with ``--help`` for the options).
"""

import sys

from course_lib.grading.grade import main

if __name__ == "__main__":
    sys.exit(main())
