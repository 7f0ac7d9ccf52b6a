"""The 31 ONC HTI-1 predictive DSI source attributes, 45 CFR 170.315(b)(11)(iv)(B), from report.json and the facts.

Each attribute says where its text came from: "computed" (from the validation report's numbers), "supplied" (a
person's documentation), "not_available" (declared, with the reason; allowed only where HTI-1 allows it) or
"blank" (a fact still to be supplied; the text says which field to fill, so no attribute is ever empty).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from careloop.reports._facts import Facts, NotAvailable, fact, is_blank, missing
from careloop.reports._format import (
    NB_NOT_RECORDED,
    RATES,
    ci_level,
    count,
    day,
    est,
    fnum,
    fpct,
    gap,
    index_unit,
    level_text,
    metric,
    metric_name,
    model_block,
    net_benefit_at,
    operating_row,
    primary,
    target_text,
    test_split,
)

__all__ = ["HTI1_ATTRIBUTES", "HTI1_KEYS", "NOT_AVAILABLE_ALLOWED", "feature_columns", "hti1_source_attributes",
           "uscdi_use"]

GROUPS = {
    1: "(1) Details and output of the intervention",
    2: "(2) Purpose of the intervention",
    3: "(3) Cautioned out-of-scope use",
    4: "(4) Intervention development details and input features",
    5: "(5) Process used to ensure fairness in development",
    6: "(6) External validation process",
    7: "(7) Quantitative measures of performance",
    8: "(8) Ongoing maintenance of implementation and use",
    9: "(9) Update and continued validation or fairness assessment schedule",
}

# (key, group, regulatory wording), in the order of 170.315(b)(11)(iv)(B); keys are OpenEMR's option ids
HTI1_ATTRIBUTES: tuple[tuple[str, int, str], ...] = (
    ("predictive_details_developer", 1, "Name and contact information for the intervention developer"),
    ("predictive_details_funding", 1,
     "Funding source of the technical implementation for the intervention(s) development"),
    ("predictive_details_output_value", 1, "Description of value that the intervention produces as an output"),
    ("predictive_details_output_type", 1, "Whether the intervention output is a prediction, classification, "
     "recommendation, evaluation, analysis, or other type of output"),
    ("predictive_purpose_intended_use", 2, "Intended use of the intervention"),
    ("predictive_purpose_patient_population", 2, "Intended patient population(s) for the intervention's use"),
    ("predictive_purpose_intended_users", 2, "Intended user(s)"),
    ("predictive_purpose_decision_role", 2, "Intended decision-making role for which the intervention was designed "
     "to be used/for (e.g., informs, augments, replaces clinical management)"),
    ("predictive_cautions_inappropriate_use", 3, "Description of tasks, situations, or populations where a user is "
     "cautioned against applying the intervention"),
    ("predictive_cautions_risks", 3,
     "Known risks, inappropriate settings, inappropriate uses, or known limitations"),
    ("predictive_development_criteria", 4, "Exclusion and inclusion criteria that influenced the training data set"),
    ("predictive_development_variables", 4, "Use of variables in (b)(11)(iv)(A)(5)–(13) as input features (race, "
     "ethnicity, language, sexual orientation, gender identity, sex, date of birth, social determinants of health, "
     "health status assessments)"),
    ("predictive_development_demographics", 4, "Description of demographic representativeness according to "
     "variables in (A)(5)–(13) including, at a minimum, those used as input features"),
    ("predictive_development_relevance", 4,
     "Description of relevance of training data to intended deployed setting"),
    ("predictive_fairness_approach", 5, "Description of the approach the intervention developer has taken to ensure "
     "that the intervention's output is fair"),
    ("predictive_fairness_bias_mitigation", 5, "Description of approaches to manage, reduce, or eliminate bias"),
    ("predictive_validation_data_source", 6, "Description of the data source, clinical setting, or environment "
     "where validity and fairness has been assessed, other than the source of training and testing data"),
    ("predictive_validation_tester", 6, "Party that conducted the external testing"),
    ("predictive_validation_demographics", 6, "Description of demographic representativeness of external data "
     "according to (A)(5)–(13), at a minimum those used as input features"),
    ("predictive_validation_process", 6, "Description of external validation process"),
    ("predictive_performance_internal_validity", 7,
     "Validity of intervention in test data derived from the same source as the initial training data"),
    ("predictive_performance_internal_fairness", 7,
     "Fairness of intervention in test data derived from the same source as the initial training data"),
    ("predictive_performance_external_validity", 7, "Validity of intervention in data external to or from a "
     "different source than the initial training data"),
    ("predictive_performance_external_fairness", 7, "Fairness of intervention in data external to or from a "
     "different source than the initial training data"),
    ("predictive_performance_outcome_evaluation", 7, "References to evaluation of use of the intervention on "
     "outcomes (bibliographic citations or hyperlinks to evaluations of how well it reduced morbidity, mortality, "
     "length of stay, or other outcomes)"),
    ("predictive_maintenance_validity_monitoring", 8,
     "Description of process and frequency by which the intervention's validity is monitored over time"),
    ("predictive_maintenance_local_validity", 8, "Validity of intervention in local data"),
    ("predictive_maintenance_fairness_monitoring", 8,
     "Description of the process and frequency by which the intervention's fairness is monitored over time"),
    ("predictive_maintenance_local_fairness", 8, "Fairness of intervention in local data"),
    ("predictive_updates_process", 9, "Description of process and frequency by which the intervention is updated"),
    ("predictive_updates_correction", 9, "Description of frequency by which the intervention's performance is "
     "corrected when risks related to validity and fairness are identified"),
)
HTI1_KEYS: tuple[str, ...] = tuple(a[0] for a in HTI1_ATTRIBUTES)

# the attributes a developer may declare "not available" (with the reason): group 6, #23, #24, #25, #27, #29, group 9
NOT_AVAILABLE_ALLOWED = frozenset(
    a[0] for n, a in enumerate(HTI1_ATTRIBUTES, 1) if a[1] in (6, 9) or n in (23, 24, 25, 27, 29))

Entry = tuple[str, str]  # (value, source)

# the USCDI variables of (b)(11)(iv)(A)(5)-(13), with the feature-column stems that carry them (first match wins)
USCDI_VARIABLES: tuple[tuple[str, str], ...] = (
    ("Race", r"race"),
    ("Ethnicity", r"ethnicity"),
    ("Language", r"(preferred_)?language"),
    ("Sexual orientation", r"sexual_orientation"),
    ("Gender identity", r"gender_identity"),
    ("Sex", r"sex|gender|administrative_sex"),
    ("Date of birth (as age)", r"age|age_at_index|age_group|birth_date|date_of_birth|dob"),
    ("Social determinants of health", r"housing|household|sdoh|food|transport\w*|income|education|employment"
                                      r"|financial|social|isolation|lives_alone|utilities|neighbou?rhood"
                                      r"|deprivation|interpersonal_safety|stress"),
    ("Health status assessments", r"functional_status|disability|cognitive\w*|mental_status|pregnan\w*|smoking"
                                  r"|tobacco|alcohol|phq\w*|gad\w*|frailty|health_status"),
)
_PAYER = r"payer|insurance|coverage"

ROLES = {
    "informs": "Informs clinical management: the output is one input among others to the care team's decision; it "
               "neither recommends a specific action nor acts on its own.",
    "augments": "Augments clinical management: the output supports a specific decision that a clinician still makes "
                "and is accountable for.",
    "replaces": "Replaces clinical management: the output drives the decision without a clinician's review.",
}


def _stem(pattern: str, column: str) -> bool:
    return re.fullmatch(rf"(?:{pattern})(?:_.*)?", column.lower()) is not None


def feature_columns(report: dict) -> list[tuple[str, str]]:
    """(column, label) of the model's input features: `model.features` when the report lists them, else the columns
    of the missingness table and the importance list; labels from those two tables."""
    data = report.get("data") or {}
    rows = [*(data.get("missingness") or []), *(report.get("importance") or [])]
    labels: dict[str, str] = {}
    for row in rows:
        if row.get("column") and row["column"] not in labels:
            labels[row["column"]] = row.get("label") or row["column"]
    listed = model_block(report).get("features")
    columns = [str(c) for c in listed] if isinstance(listed, list) and listed else list(labels)
    return [(c, labels.get(c, c)) for c in columns]


def uscdi_use(report: dict) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """For each (A)(5)-(13) variable, the feature columns that carry it; and the payer columns (a proxy).

    >>> uses, payer = uscdi_use({"data": {"missingness": [{"column": "race"}, {"column": "household_size_last"},
    ...                                                    {"column": "payer"}, {"column": "age"}]}})
    >>> [cols for _, cols in uses if cols]
    [['race'], ['age'], ['household_size_last']]
    >>> payer
    ['payer']
    """
    uses: dict[str, list[str]] = {name: [] for name, _ in USCDI_VARIABLES}
    payer = []
    for col, _label in feature_columns(report):
        name = next((n for n, pattern in USCDI_VARIABLES if _stem(pattern, col)), None)
        if name is not None:
            uses[name].append(col)
        elif _stem(_PAYER, col):
            payer.append(col)
    return list(uses.items()), payer


# ---- text of each attribute ----

def _supplied(facts: Facts, name: str, text: Callable[[object], str] = str) -> Entry:
    value = fact(facts, name)
    if isinstance(value, NotAvailable):
        return f"Not available: {value.reason}", "not_available"
    if is_blank(value):
        return missing(name), "blank"
    return text(value).strip(), "supplied"


def _external(facts: Facts, name: str) -> Entry:
    na = facts.external_validation.na
    if na is not None:
        return f"Not available: {na.reason}", "not_available"
    return _supplied(facts, f"external_validation.{name}")


def _developer(facts: Facts) -> Entry:
    name, contact = facts.developer_name, facts.developer_contact
    if is_blank(name) or is_blank(contact):
        blanks = [f for f, v in (("developer_name", name), ("developer_contact", contact)) if is_blank(v)]
        known = f" Supplied so far: {(name or contact or '').strip()}." if len(blanks) == 1 else ""
        return missing(", ".join(blanks)) + "." + known, "blank"
    return f"{name.strip()}. Contact: {contact.strip()}", "supplied"


def output_value_text(report: dict) -> str:
    data, model, ev, op = report.get("data") or {}, model_block(report), primary(report), report.get("operating_point")
    label = data.get("label") or "the outcome"
    if model:
        est_name = {"lightgbm": "gradient-boosted decision trees (LightGBM)",
                    "logistic": "logistic regression"}.get(model.get("estimator"), str(model.get("estimator")))
        cal = model.get("calibration") or {}
        text = (f"A risk: the probability (0 to 1, shown as a percentage) of {label}, for each index stay. It comes "
                f"from {est_name} over {model.get('n_features', 'its')} input features (feature set "
                f"{model.get('feature_set', 'unknown')}), recalibrated by {cal.get('method', 'unknown')} scaling "
                f"fitted on the {cal.get('fitted_on', 'calibration')} split, so that a risk of 20% means about 20 "
                f"in 100 such stays have the outcome.")
    else:
        kind = ("a probability" if ev.get("probabilistic", True)
                else "a points score, not a probability (its calibration is that of a logistic recalibration)")
        text = f"The score {report.get('primary')}: {kind}, for {label}, for each index stay."
    if isinstance(op, dict) and op.get("threshold") is not None:
        text += (f" At the operating point a stay with a risk of {fpct(op['threshold'])} or more is flagged "
                 f"({op.get('policy')} policy, {target_text(op, index_unit(report))}, chosen on the "
                 f"{op.get('chosen_on', 'calibration')} split).")
    return text


def output_type_text(report: dict) -> str:
    op = report.get("operating_point")
    text = "Prediction: an individual estimate of the risk of a future outcome."
    if isinstance(op, dict) and op.get("threshold") is not None:
        text += " The threshold at the operating point also turns it into a classification (flagged or not)."
    return text


def criteria_text(report: dict) -> str:
    data, model = report.get("data") or {}, model_block(report)
    splits = data.get("splits") or {}
    firsts = [s.get("first_index") for s in splits.values() if s.get("first_index")]
    lasts = [s.get("last_index") for s in splits.values() if s.get("last_index")]
    parts = [f"Source: {data.get('source', 'unknown')}."]
    if model.get("task"):
        parts.append(f"Cohort of the task {model['task']}.")
    if firsts and lasts:
        parts.append(f"Index times from {day(min(firsts))} to {day(max(lasts))}.")
    parts.append(f"Outcome: {data.get('label', 'unknown')} (positive: {data.get('positive', 'unknown')}).")
    excluded = data.get("excluded") or []
    if excluded:
        steps = "; ".join(f"{e.get('step')}: {count(e.get('stays'))} stays" for e in excluded)
        parts.append(f"Exclusion steps, in order, with the stays each removed: {steps}.")
    else:
        parts.append("The report records no exclusion steps.")
    if splits:
        parts.append("Included stays by split: " + "; ".join(
            f"{name} {count(s.get('stays'))} stays of {count(s.get('patients'))} patients, "
            f"{count(s.get('positives'))} positive ({fpct(s.get('prevalence'))})" for name, s in splits.items()) + ".")
    return " ".join(parts)


def _variables(report: dict) -> str:
    uses, payer = uscdi_use(report)
    cols = feature_columns(report)
    if not cols:
        return ("The report lists no input features (third-party scores): their inputs are those of each score's "
                "publication.")
    said = "; ".join(f"{name}: " + (f"used ({', '.join(c)})" if c else "not used") for name, c in uses)
    text = f"Of the {len(cols)} input feature columns: {said}."
    if payer:
        text += (f" Payer (insurance type), not one of these variables but a socio-economic proxy, is also an input "
                 f"({', '.join(payer)}).")
    left_out = [str(c) for c in model_block(report).get("excluded_inputs") or []]
    if left_out:
        fair = set((report.get("fairness") or {}).get("attributes") or {})
        text += f" Left out of the inputs on purpose: {', '.join(left_out)}"
        used = [c for c in left_out if c in fair]
        text += (f" ({', '.join(used)} only for the subgroup analysis)." if used else ".")
    return text


def demographics_text(report: dict) -> str:
    fair = report.get("fairness") or {}
    ev, test = primary(report), test_split(report)
    n = ev.get("n") or test.get("stays")
    text = (f"Test split (held-out patients of the development source): {count(n)} stays of "
            f"{count(ev.get('clusters') or test.get('patients'))} patients.")
    attrs = fair.get("attributes") or {}
    for attr, block in attrs.items():
        groups = [f"{g.get('label') or g.get('group')} {count(g.get('n'))} ({fpct(_share(g.get('n'), n))})"
                  for g in block.get("groups") or []]
        supp = [f"{s.get('label') or s.get('group')}: {count(s.get('n'))} ({fpct(_share(s.get('n'), n))})"
                for s in block.get("suppressed") or []]
        text += f" {attr}: " + (", ".join(groups) or "no group reported")
        if supp:
            text += "; too small to assess: " + ", ".join(supp)
        text += "."
    used = [name for name, c in uscdi_use(report)[0] if c]
    covered = {_variable_of(a) for a in attrs}
    uncovered = [u for u in used if u not in covered]
    if uncovered:
        text += " Input variables with no distribution in the report: " + ", ".join(uncovered) + "."
    return text


def _share(part: object, whole: object) -> float | None:
    try:
        return float(part) / float(whole)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _variable_of(attribute: str) -> str | None:
    return next((n for n, pattern in USCDI_VARIABLES if _stem(pattern, attribute)), None)


def validity_text(report: dict) -> str:
    """The test-split validity of the primary score in one paragraph, every number with its interval (at the
    report's ci_level)."""
    lv = ci_level(report)
    ev, test, m = primary(report), test_split(report), primary(report).get("metrics") or {}
    unit = index_unit(report)
    text = (f"Test split of {(report.get('data') or {}).get('source', 'the development source')}: {count(ev.get('n'))} "
            f"stays ({count(ev.get('clusters'))} patients, {count(ev.get('positives'))} with the outcome, prevalence "
            f"{fpct(ev.get('prevalence'))}), index times {day(test.get('first_index'))} to "
            f"{day(test.get('last_index'))}. Discrimination: AUROC {est(m.get('auroc'), level=lv)}; AUPRC "
            f"{est(m.get('auprc'), level=lv)}. Calibration: slope {est(m.get('calibration_slope'), level=lv)}, "
            f"intercept {est(m.get('calibration_intercept'), level=lv)}, observed/expected "
            f"{est(m.get('observed_expected'), level=lv)}; Brier score {est(m.get('brier'), level=lv)}.")
    if not ev.get("probabilistic", True):
        text += " (The score is not a probability: its calibration is that of its logistic recalibration.)"
    row = operating_row(report)
    if row:
        nb = net_benefit_at(ev, row)
        text += (f" At the operating point (risk of {fpct(row.get('threshold'))} or more): sensitivity "
                 f"{metric('sensitivity', row.get('sensitivity'), level=lv)}, specificity "
                 f"{metric('specificity', row.get('specificity'), level=lv)}, PPV "
                 f"{metric('ppv', row.get('ppv'), level=lv)}, NPV {metric('npv', row.get('npv'), level=lv)}, "
                 f"{fnum(row.get('alerts_per_100'), 1)} alerts per 100 {unit}, number needed to evaluate "
                 f"{metric('nne', row.get('nne'), level=lv)}")
        text += (f"; net benefit {est(nb.get('net_benefit'), level=lv)} against {fnum(nb.get('treat_all'))} for "
                 f"treating all" if nb else f"; net benefit {NB_NOT_RECORDED}")
        text += "."
    for c in report.get("comparisons") or []:
        text += (f" {metric_name(c.get('metric', 'auroc'))} difference from {c.get('reference')}: "
                 f"{est(c.get('difference'), sign=True, level=lv)} (paired bootstrap).")
    text += f" Intervals: bootstrap {level_text(lv)} ({ev.get('n_boot', 'n/a')} resamples of patients)."
    return text


def group_label(fair: dict, flag: dict) -> str:
    """The label of a flagged group (its code when the report gives none)."""
    groups = ((fair.get("attributes") or {}).get(flag.get("attribute")) or {}).get("groups") or []
    return next((str(g.get("label")) for g in groups if g.get("group") == flag.get("group") and g.get("label")),
                str(flag.get("group")))


def fairness_text(report: dict) -> str:
    """Subgroup results of the primary score: flags first, then every group's gaps, then suppressed groups."""
    fair = report.get("fairness") or {}
    attrs = fair.get("attributes") or {}
    if not attrs:
        return "No subgroup analysis in the report."
    tol = fair.get("tolerances") or {}
    text = (f"Subgroups of the test split by {', '.join(attrs)}; each gap is the group minus the overall figure with a "
            f"paired-bootstrap 95% CI, flagged when beyond its tolerance and significant after a Bonferroni "
            f"correction over every group and measure tested "
            f"(tolerances: {', '.join(f'{metric_name(k)} {v:g}' for k, v in tol.items()) or 'none'}; error rates at "
            f"the operating threshold {fpct(fair.get('threshold'))}; groups under {fair.get('min_group_size')} stays "
            f"or with fewer than 10 positives or negatives are suppressed).")
    flags = fair.get("flags") or []
    if flags:
        text += f" {len(flags)} disparit{'y' if len(flags) == 1 else 'ies'} flagged: " + "; ".join(
            f"{f.get('attribute')} {group_label(fair, f)}, {metric_name(f.get('metric', ''))} gap "
            f"{gap(f.get('metric', ''), f.get('gap'))} beyond ±{f.get('tolerance')}" for f in flags) + "."
    else:
        text += " No disparity beyond tolerance."
    shown = [k for k in ("auroc", "observed_expected", "calibration_intercept") if k in tol] or ["auroc"]
    for attr, block in attrs.items():
        rows = []
        for g in block.get("groups") or []:
            gaps = ", ".join(f"{metric_name(k)} {gap(k, (g.get('gaps') or {}).get(k))}" for k in shown)
            rows.append(f"{g.get('label') or g.get('group')} (n={count(g.get('n'))}): {gaps}")
        text += f" {attr}: " + ("; ".join(rows) or "no group reported")
        supp = block.get("suppressed") or []
        if supp:
            text += "; suppressed: " + ", ".join(
                f"{s.get('label') or s.get('group')} (n={count(s.get('n'))}, {s.get('reason')})" for s in supp)
        text += "."
    rates = [k for k in ("tpr", "fpr", "ppv", "flag_rate") if k in RATES and k not in tol]
    if rates:
        text += (f" Error-rate gaps ({', '.join(metric_name(k) for k in rates)}) are reported with their intervals in "
                 f"the validation report and carry no tolerance.")
    return text


def _local(facts: Facts, name: str, computed: Callable[[], str]) -> Entry:
    value = facts.local_data
    if isinstance(value, NotAvailable):
        return f"Not available: {value.reason}", "not_available"
    if value is None:
        return missing("local_data"), "blank"
    return ("The development data are this hospital's own, so local results are the held-out test split's. "
            + computed()), "computed"


def hti1_source_attributes(report: dict, facts: Facts) -> dict[str, dict]:
    """All 31 HTI-1 predictive source attributes, in regulatory order: key -> {number, group, attribute, value,
    source}, where source is "computed", "supplied", "not_available" or "blank" and value is never empty.

    >>> attrs = hti1_source_attributes({"primary": "m", "scores": {"m": {}}}, Facts())
    >>> len(attrs), attrs["predictive_details_funding"]["source"]
    (31, 'blank')
    """
    def role(v: object) -> str:
        return ROLES.get(str(v), str(v))

    build: dict[str, Callable[[], Entry]] = {
        "predictive_details_developer": lambda: _developer(facts),
        "predictive_details_funding": lambda: _supplied(facts, "funding_source"),
        "predictive_details_output_value": lambda: (output_value_text(report), "computed"),
        "predictive_details_output_type": lambda: (output_type_text(report), "computed"),
        "predictive_purpose_intended_use": lambda: _supplied(facts, "intended_use"),
        "predictive_purpose_patient_population": lambda: _supplied(facts, "patient_population"),
        "predictive_purpose_intended_users": lambda: _supplied(facts, "intended_users"),
        "predictive_purpose_decision_role": lambda: _supplied(facts, "decision_role", role),
        "predictive_cautions_inappropriate_use": lambda: _supplied(facts, "out_of_scope"),
        "predictive_cautions_risks": lambda: _supplied(facts, "risks_and_limitations"),
        "predictive_development_criteria": lambda: (criteria_text(report), "computed"),
        "predictive_development_variables": lambda: (_variables(report), "computed"),
        "predictive_development_demographics": lambda: (demographics_text(report), "computed"),
        "predictive_development_relevance": lambda: _supplied(facts, "training_data_relevance"),
        "predictive_fairness_approach": lambda: _supplied(facts, "fairness_approach"),
        "predictive_fairness_bias_mitigation": lambda: _supplied(facts, "bias_mitigation"),
        "predictive_validation_data_source": lambda: _external(facts, "data_source"),
        "predictive_validation_tester": lambda: _external(facts, "tester"),
        "predictive_validation_demographics": lambda: _external(facts, "demographics"),
        "predictive_validation_process": lambda: _external(facts, "process"),
        "predictive_performance_internal_validity": lambda: (validity_text(report), "computed"),
        "predictive_performance_internal_fairness": lambda: (fairness_text(report), "computed"),
        "predictive_performance_external_validity": lambda: _external(facts, "validity"),
        "predictive_performance_external_fairness": lambda: _external(facts, "fairness"),
        "predictive_performance_outcome_evaluation": lambda: _supplied(facts, "outcome_evaluations"),
        "predictive_maintenance_validity_monitoring": lambda: _supplied(facts, "validity_monitoring"),
        "predictive_maintenance_local_validity": lambda: _local(facts, "validity", lambda: validity_text(report)),
        "predictive_maintenance_fairness_monitoring": lambda: _supplied(facts, "fairness_monitoring"),
        "predictive_maintenance_local_fairness": lambda: _local(facts, "fairness", lambda: fairness_text(report)),
        "predictive_updates_process": lambda: _supplied(facts, "update_process"),
        "predictive_updates_correction": lambda: _supplied(facts, "correction_frequency"),
    }
    out: dict[str, dict] = {}
    for number, (key, group, wording) in enumerate(HTI1_ATTRIBUTES, 1):
        value, source = build[key]()
        if source == "not_available" and key not in NOT_AVAILABLE_ALLOWED:  # the Facts model prevents this
            raise ValueError(f"HTI-1 attribute {key} cannot be declared not available")
        out[key] = {"number": number, "group": GROUPS[group], "attribute": wording, "value": value or missing(key),
                    "source": source}
    return out
