"""``python -m grader SOLUTION SUBMISSIONS``: the instructor's grader (``--help`` for the options)."""

import sys

from grader.grade import main

if __name__ == "__main__":
    sys.exit(main())
