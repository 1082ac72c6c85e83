"""Summaries, findings, tables and plots of the comparison, rebuilt from ``runs.jsonl`` alone (no torch).

Every preset is compared with the zero-dropout baseline, and a preset that names a control (``control`` in its
file: `rdrop` names `classic`) with that control too, and with the control trained at the preset's compute where
the preset costs more passes per step (the ``<control>@<k>x`` arm); paired by seed, on the test split, twice:
  * early-stopped: each run at its evaluation point with the best selection-split score (``select_by``: accuracy,
    macro-F1 or loss; ties go to the earliest point);
  * fixed budget: each run at its final step.
Every evaluation point of a record carries the selection metrics, and the point each ``select_by`` rule picks and
the final one carry the test metrics computed from their predictions, so a report under another ``select_by`` is
recomputed from the records without retraining. With several learning rates, every seed runs each, and each seed's
rate is chosen on its own selection split, as its early-stopping point is (`chosen_runs`).
Verdicts (see `stats`): five outcomes, on test accuracy (the primary endpoint) and on temperature-scaled test NLL;
raw NLL and ECE are calibration, reported without a verdict. A regression (`tasks`) is judged on test R² (the
primary endpoint) and Spearman's correlation instead. One alpha per experiment covers every verdict it
reports, at every look of a staged grid. `pooled` answers per training size (data sets as strata) and pools over
sizes only where size does not moderate the effect and there are at least three cells.
"""

from .findings import baseline_text, findings, rates_text, sweep_text, table
from .numbers import (
    COMPARISONS,
    VERDICT_METRICS,
    cell_parts,
    cell_variance,
    check_margins,
    check_select_by,
    chosen_runs,
    column_alpha,
    controls,
    dose_response,
    pooled,
    power,
    regimes,
    run_values,
    selected_point,
    stop_reason,
    summarize,
    sweep_points,
)
from .pooled_page import answer, pooled_table, pooled_text
from .writing import report, report_dir, report_many, test_set_terms

__all__ = ["COMPARISONS", "VERDICT_METRICS", "answer", "baseline_text", "cell_parts", "cell_variance", "check_margins",
           "check_select_by", "column_alpha", "controls", "dose_response", "findings", "pooled", "pooled_table",
           "pooled_text", "power", "regimes", "report", "report_dir", "report_many", "run_values", "selected_point",
           "stop_reason", "summarize", "sweep_points", "sweep_text", "table", "test_set_terms",
           "chosen_runs", "rates_text"]
