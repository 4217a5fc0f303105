"""`make bench`: performance targets as ratios against a reference measured in the same run.

Each ``benchmarks/bench_*.py`` module defines ``run() -> list[Result]``. A
ratio is ``ours / reference`` time (lower is better) unless the Result says
otherwise; a Result with a ``target`` fails the run when missed.
"""
