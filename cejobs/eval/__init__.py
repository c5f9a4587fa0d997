"""Evaluation of CE stores: metrics (pure numpy), report (summary.json, tables, report.md)
and figures (matplotlib, Agg). See docs/evaluation.md."""
