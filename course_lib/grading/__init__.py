"""Exercises and grading, apart from the lessons they serve.

``build``: writes exercises/ (the students' copies) from solutions/.
"""
