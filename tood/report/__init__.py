"""Paper vs ours: what the `evaluate` and `tabulate` stages write.

paper.py       the paper's numbers and which variant makes each paper row
stats.py       every test and verdict: Welch's t and CI, Holm, TOST, power (scipy, statsmodels; issue 27)
results.py     the grid's runs, per-variant statistics, each ablation judged in its family
tables.py      reports/tables.md and reports/summary.json
extended.py    the extended grid's part of them: Table 2 in full and the top-m sweep (issue 20)
figures.py     the PNG figures
complexity.py  parameter counts and GFLOPs measured from the model (Table 1)
plots_template.py  .dvc/plots_template.html: `dvc plots show` with its chart libraries inline (offline)
budget.py      AP and Δ against the training budget, from the runs' curves
"""
