"""Figures and widgets, one module per lesson. The only package that imports matplotlib or ipywidgets."""
