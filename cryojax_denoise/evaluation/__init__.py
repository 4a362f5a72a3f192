"""Evaluation of denoisers: scoring on test sets, tables, figures and the sweep report."""
