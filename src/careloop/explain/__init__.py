"""Why a patient is at risk, in words a clinician reads on a CDS Hooks card.

- `column_infos(FeatureSet.describe(), units)` says what each model column means (`ColumnInfo`);
- `phrase(info, value)` turns a column and its value into a short clinical phrase ("3 admissions in the past 6
  months", "sodium 128 mmol/L at discharge", "discharged to a skilled nursing facility", "no stable housing");
  with `ended=False` (the stay still open at the index time) a last value over the stay is "latest sodium 128 mmol/L";
- `display(attribute, code)` names a coded value from public vocabularies (CDC race and ethnicity, ISO 639, SOPT,
  HL7 discharge disposition and admit source, LOINC answers), for cards, reports and fairness tables;
- `tree_contributions(model, X)` gives a LightGBM model's exact SHAP values in log-odds (bias last);
- `reasons(contributions, rows, infos)` picks each row's top reasons, `global_importance` ranks the columns.
"""

from careloop.explain._columns import ColumnInfo, column_infos, column_infos_for_table, column_title
from careloop.explain._phrases import format_number, phrase, window_phrase
from careloop.explain._reasons import Reason, global_importance, reasons
from careloop.explain._tree import tree_contributions
from careloop.explain._vocab import display

__all__ = [
    "ColumnInfo",
    "Reason",
    "column_infos",
    "column_infos_for_table",
    "column_title",
    "display",
    "format_number",
    "global_importance",
    "phrase",
    "reasons",
    "tree_contributions",
    "window_phrase",
]
