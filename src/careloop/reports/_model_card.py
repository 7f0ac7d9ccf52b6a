"""The CHAI Applied Model Card (schema v0.2) from report.json and the facts, as a dict, Markdown and XML.

The dict's keys are the schema's element names in `xs:sequence` order; optional elements (EHRCompatibility,
RegulatoryApproval, Security, Transparency, ThirdPartyInformation, EvaluationReferences, ClinicalTrial,
ReimbursementStatus) appear only when supplied, and a blank required fact reads "Not yet supplied: fill <field> in
the documentation file". KeyMetrics are filled from the report's numbers; each `ValueJson` is a JSON string as in
CHAI's examples: `{"kind": "estimate_ci", "estimate", "lower", "upper", "level": 95[, "unit"]}` or
`{"kind": "single", "value"[, "unit"]}`, rates in percent; `level` is the report's ci_level in percent.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import escape

from careloop.reports._facts import Facts, NotAvailable, fact, is_blank, missing
from careloop.reports._format import (
    NB_NOT_RECORDED,
    RATES,
    ci_level,
    count,
    day,
    est,
    estimate,
    fnum,
    fpct,
    index_unit,
    interval,
    level_text,
    metric,
    metric_name,
    model_block,
    net_benefit_at,
    number,
    operating_row,
    primary,
    test_split,
)
from careloop.reports._hti1 import (
    criteria_text,
    demographics_text,
    feature_columns,
    group_label,
    output_type_text,
    output_value_text,
)

__all__ = ["CHAI_NAMESPACE", "model_card", "model_card_markdown", "model_card_xml"]

CHAI_NAMESPACE = "https://mc.chai.org/v0.2/schema.xsd"
_ROLE_WORDS = {"informs": "informs clinical management", "augments": "augments clinical management",
               "replaces": "replaces clinical management"}


def _text(facts: Facts, name: str) -> str:
    value = fact(facts, name)
    if isinstance(value, NotAvailable):
        return f"Not available: {value.reason}"
    if is_blank(value):
        return missing(name)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if not is_blank(v))
    return str(value).strip()


def _optional(out: dict, key: str, facts: Facts, name: str) -> None:
    if not is_blank(fact(facts, name)):
        out[key] = _text(facts, name)


def _r(x: float | None, rate: bool) -> float | None:
    return None if x is None else round(x * 100, 2) if rate else round(x, 4)


def value_json(e: Any, *, rate: bool = False, unit: str | None = None, level: float = 0.95) -> str:
    """A CHAI MetricResult ValueJson string for an estimate (or a bare number); `level` is the interval's confidence.

    >>> value_json({"estimate": 0.74123, "ci": [0.71, 0.77]})
    '{"kind":"estimate_ci","estimate":0.7412,"lower":0.71,"upper":0.77,"level":95}'
    >>> value_json(12.5, unit="alerts per 100 discharges")
    '{"kind":"single","value":12.5,"unit":"alerts per 100 discharges"}'
    >>> value_json({"estimate": 0.74123, "ci": [0.71, 0.77]}, level=0.9)
    '{"kind":"estimate_ci","estimate":0.7412,"lower":0.71,"upper":0.77,"level":90}'
    """
    point, ci = estimate(e), interval(e)
    unit = "%" if rate and unit is None else unit
    if point is not None and ci is not None:
        out: dict[str, Any] = {"kind": "estimate_ci", "estimate": _r(point, rate), "lower": _r(ci[0], rate),
                               "upper": _r(ci[1], rate), "level": _pct(level)}
    else:
        out = {"kind": "single", "value": _r(point, rate)}
    if unit:
        out["unit"] = unit
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def _pct(level: float) -> int | float:
    """A level as a percentage number: 95, 90, 97.5."""
    pct = round(level * 100, 6)
    return int(pct) if pct.is_integer() else pct


def _result(label: str, e: Any, **kw: Any) -> dict[str, str]:
    return {"Label": label, "ValueJson": value_json(e, **kw)}


def _model_type(report: dict) -> str:
    model = model_block(report)
    if not model:
        return f"Third-party score(s) evaluated by careloop: {', '.join(report.get('scores') or {})}."
    name = {"lightgbm": "Gradient-boosted decision trees (LightGBM)",
            "logistic": "Penalised logistic regression"}.get(model.get("estimator"), str(model.get("estimator")))
    cal = model.get("calibration") or {}
    text = (f"{name}, recalibrated by {cal.get('method', 'unknown')} scaling fitted on the "
            f"{cal.get('fitted_on', 'calibration')} split; {model.get('n_features', 'n/a')} input features "
            f"(feature set {model.get('feature_set', 'unknown')}).")
    cands = model.get("candidates") or {}
    if cands:
        text += " Candidates compared on the calibration split: " + "; ".join(
            f"{n} (" + ", ".join(f"{metric_name(k.removeprefix('calibration_'))} {est(v)}" for k, v in c.items()
                                 if isinstance(v, dict)) + ")" for n, c in cands.items()) + "."
    if model.get("selection"):
        text += f" Selection: {model['selection']}"
    return text


def _input_types(report: dict) -> str:
    cols = feature_columns(report)
    labels = ", ".join(label for _, label in cols) or "not listed in the report"
    return (f"Input: structured EHR data recorded at or before the index time, as {len(cols) or 'n/a'} feature "
            f"columns: {labels}. Missing inputs are allowed and handled by the model. "
            f"Output: {output_type_text(report)}")


def _summary(report: dict, facts: Facts) -> str:
    lv = ci_level(report)
    data, model, m = report.get("data") or {}, model_block(report), primary(report).get("metrics") or {}
    name = model.get("name") or report.get("title") or report.get("primary")
    text = f"{name} predicts {data.get('label', 'the outcome')}"
    if model.get("task"):
        text += f" (task {model['task']})"
    text += (f". On {count(primary(report).get('n'))} held-out test stays: AUROC {est(m.get('auroc'), level=lv)}, "
             f"calibration slope {est(m.get('calibration_slope'), level=lv)}.")
    if not is_blank(facts.intended_use):
        text += f" Intended use: {facts.intended_use.strip()}"
    return text


def _biases(report: dict, facts: Facts) -> str:
    text = _text(facts, "biases_and_ethics")
    flags = (report.get("fairness") or {}).get("flags") or []
    if flags:
        text += "\n\nDisparities flagged in validation: " + "; ".join(
            str(f.get("message") or f"{f.get('attribute')} {f.get('group')} {f.get('metric')}") for f in flags) + "."
    return text


def _maintenance(facts: Facts) -> str:
    parts = (("Validity monitoring", "validity_monitoring"), ("Fairness monitoring", "fairness_monitoring"),
             ("Updates", "update_process"), ("Corrections", "correction_frequency"))
    return "\n\n".join(f"{title}: {_text(facts, name)}" for title, name in parts)


def _testing_data(report: dict) -> str:
    ev, test = primary(report), test_split(report)
    return (f"Held-out test split of {(report.get('data') or {}).get('source', 'the development source')} (patients "
            f"disjoint from training and calibration: splits are assigned per patient, and a supplied split column "
            f"that puts a patient in two splits is refused when the data are loaded): {count(ev.get('n'))} stays of "
            f"{count(ev.get('clusters'))} "
            f"patients, {count(ev.get('positives'))} with the outcome ({fpct(ev.get('prevalence'))}), index times "
            f"{day(test.get('first_index'))} to {day(test.get('last_index'))}.")


def _process(report: dict) -> str:
    model, op, ev = model_block(report), report.get("operating_point") or {}, primary(report)
    text = ""
    if model:
        text += (f"The estimator was chosen ({model.get('selection', 'no reason recorded')}) and calibrated on the "
                 f"calibration split, never on the test split. ")
    if op.get("rationale"):
        text += (f"The operating threshold ({fpct(op.get('threshold'))}) was chosen on the "
                 f"{op.get('chosen_on', 'calibration')} split: {op['rationale']} ")
    text += (f"The test split was scored once; {level_text(ci_level(report))} intervals are percentile bootstrap "
             f"intervals over {ev.get('n_boot', 'n/a')} resamples of patients (repeated stays of one patient stay "
             f"together).")
    return text


def _usefulness(report: dict) -> dict:
    lv = ci_level(report)
    ev, m, row = primary(report), primary(report).get("metrics") or {}, operating_row(report)
    unit = index_unit(report)
    results = [_result("AUROC (test split)", m.get("auroc"), level=lv),
               _result("AUPRC (test split)", m.get("auprc"), level=lv)]
    interp = (f"AUROC {est(m.get('auroc'), level=lv)}: the chance that a stay with the outcome is ranked above one "
              f"without.")
    if row:
        at = f"at the operating point (risk ≥ {fpct(row.get('threshold'))})"
        nb = net_benefit_at(ev, row)
        results += [_result(f"Sensitivity {at}", row.get("sensitivity"), rate=True, level=lv),
                    _result(f"PPV {at}", row.get("ppv"), rate=True, level=lv),
                    _result(f"Alerts per 100 {unit} {at}", row.get("alerts_per_100"), unit=f"alerts per 100 {unit}")]
        if nb:
            results.append(_result(f"Net benefit {at}", nb.get("net_benefit"), level=lv))
        interp += (f" At the operating point the model flags {fnum(row.get('alerts_per_100'), 1)} per 100 {unit}, "
                   f"finds {metric('sensitivity', row.get('sensitivity'), level=lv)} of the stays with the outcome, "
                   f"and {metric('ppv', row.get('ppv'), level=lv)} of flagged stays have it (number needed to evaluate "
                   f"{metric('nne', row.get('nne'), level=lv)}).")
        interp += (f" Net benefit {est(nb.get('net_benefit'), level=lv)} against {fnum(nb.get('treat_all'))} for "
                   f"treating everyone." if nb else f" Net benefit at this threshold: {NB_NOT_RECORDED}.")
    for c in report.get("comparisons") or []:
        name = metric_name(c.get("metric", "auroc"))
        results.append(_result(f"{name} difference from {c.get('reference')} (paired bootstrap)", c.get("difference"),
                               level=lv))
        interp += f" {name} difference from {c.get('reference')}: {est(c.get('difference'), sign=True, level=lv)}."
    op = report.get("operating_point") or {}
    goal = ("Rank stays by their risk of the outcome well enough to target follow-up" +
            (f", with a {op.get('policy')} operating point ({op.get('rationale')})" if op.get("policy") else "") + ".")
    return {"MetricGoal": goal, "Results": results, "Interpretation": interp,
            "TestType": "Internal validation: held-out test split from the same source as the training data.",
            "TestingDataDescription": _testing_data(report), "ValidationProcessAndJustification": _process(report)}


def _fairness(report: dict) -> dict:
    fair = report.get("fairness") or {}
    attrs, tol, flags = fair.get("attributes") or {}, fair.get("tolerances") or {}, fair.get("flags") or []
    results = [_result("Disparities flagged beyond tolerance", len(flags))]
    for f in flags:
        name = f.get("metric", "")
        results.append(_result(f"{f.get('attribute')} {group_label(fair, f)}: {metric_name(name)} gap (flagged)",
                               f.get("gap"), rate=name in RATES))
    for attr, block in attrs.items():
        for name in tol:
            gaps = [(g, (g.get("gaps") or {}).get(name)) for g in block.get("groups") or []]
            gaps = [(g, e) for g, e in gaps if estimate(e) is not None]
            if gaps:
                g, e = max(gaps, key=lambda ge: abs(estimate(ge[1]) or 0.0))
                results.append(_result(f"{attr}: largest {metric_name(name)} gap ({g.get('label') or g.get('group')})",
                                       e, rate=name in RATES))
    suppressed = [f"{a} {s.get('label') or s.get('group')} (n={s.get('n')})"
                  for a, b in attrs.items() for s in b.get("suppressed") or []]
    if flags:
        interp = "Disparities beyond tolerance: " + "; ".join(
            str(f.get("message") or f"{f.get('attribute')} {f.get('group')} {f.get('metric')}") for f in flags) + "."
    else:
        interp = ("No subgroup gap lies beyond its tolerance with significance after a Bonferroni correction over "
                  "every group and measure tested.")
    if suppressed:
        interp += " Too small to assess: " + ", ".join(suppressed) + "."
    interp += (" Error-rate gaps at the operating point (sensitivity, false-positive rate, PPV, flag rate) are "
               "reported without a tolerance: with different base rates they cannot all match while the model stays "
               "calibrated, so which parity matters is the governance committee's decision.")
    goal = ("Every subgroup's discrimination and calibration within tolerance of the overall figure (" +
            (", ".join(f"{metric_name(k)} ±{v:g}" for k, v in tol.items()) or "no tolerances set") + ").")
    return {"MetricGoal": goal, "Results": results, "Interpretation": interp,
            "TestType": "Subgroup analysis of the internal test split, paired bootstrap gaps from the overall figure.",
            "TestingDataDescription": _testing_data(report) + " Subgroups by " + (", ".join(attrs) or "none") +
            f"; groups under {fair.get('min_group_size', 'n/a')} stays or with fewer than 10 positives or negatives "
            f"are suppressed.",
            "ValidationProcessAndJustification": "A disparity is flagged when a gap's point estimate lies beyond its "
            "tolerance and it stays significant after a Bonferroni correction over every group and measure tested; "
            "observed/expected gaps are log ratios."}


def _safety(report: dict) -> dict:
    lv = ci_level(report)
    m, row = primary(report).get("metrics") or {}, operating_row(report)
    results = [_result("Calibration slope", m.get("calibration_slope"), level=lv),
               _result("Calibration intercept (calibration-in-the-large)", m.get("calibration_intercept"), level=lv),
               _result("Observed/expected ratio", m.get("observed_expected"), level=lv),
               _result("Brier score", m.get("brier"), level=lv)]
    if row:
        results += [_result("Specificity at the operating point", row.get("specificity"), rate=True, level=lv),
                    _result("NPV at the operating point", row.get("npv"), rate=True, level=lv),
                    _result("Number needed to evaluate at the operating point", row.get("nne"), level=lv)]
    interp = (f"Calibration slope {est(m.get('calibration_slope'), level=lv)} (1 is ideal; below 1 means risks are "
              f"too extreme), intercept {est(m.get('calibration_intercept'), level=lv)} (0 is ideal), "
              f"observed/expected {est(m.get('observed_expected'), level=lv)} (1 is ideal): the displayed risks can be "
              f"read as probabilities when these are near their ideals.")
    if not primary(report).get("probabilistic", True):
        interp += " The score is not a probability; these figures are of its logistic recalibration."
    miss = (report.get("data") or {}).get("missingness") or []
    worst = max(miss, key=lambda r: number(r.get("test")) or 0.0, default=None)
    if worst is not None and number(worst.get("test")) is not None:
        interp += (f" The input missing most often in the test split is {worst.get('label') or worst.get('column')} "
                   f"({fpct(worst.get('test'))}).")
    return {"MetricGoal": "Risks that mean what they say (calibration) and an alert burden the care team can absorb.",
            "Results": results, "Interpretation": interp,
            "TestType": "Internal validation: held-out test split from the same source as the training data.",
            "TestingDataDescription": _testing_data(report),
            "ValidationProcessAndJustification": "Calibration slope and intercept from a logistic regression of the "
            "outcome on logit(risk) (the intercept with logit(risk) as an offset); observed/expected is the sum of "
            "outcomes over the sum of risks. " + _process(report)}


def model_card(report: dict, facts: Facts) -> dict:
    """The CHAI Applied Model Card v0.2 as a dict in schema order (see the module docstring).

    >>> card = model_card({"primary": "m", "scores": {"m": {}}, "model": {"name": "readmission"}}, Facts())
    >>> list(card)[:3], card["BasicInfo"]["ModelName"]
    (['BasicInfo', 'ReleaseInfo', 'ModelSummary'], 'readmission')
    """
    model = model_block(report)
    release: dict[str, Any] = {
        "ReleaseStage": _text(facts, "release_stage"),
        "ReleaseDate": day(report.get("created")),
        "ReleaseVersion": " ".join(str(x) for x in (model.get("version"), model.get("bundle_id") and
                                                    f"(bundle {model['bundle_id']})") if x) or "unversioned",
        "GlobalAvailability": _text(facts, "global_availability"),
    }
    if not is_blank(facts.ehr_compatibility):
        release["EHRCompatibility"] = [e for e in facts.ehr_compatibility or [] if not is_blank(e)]
    _optional(release, "RegulatoryApproval", facts, "regulatory_approval")
    how = _text(facts, "how_to_use")
    if facts.decision_role:
        how += f"\n\nDecision role: the output {_ROLE_WORDS[facts.decision_role]}."
    ai: dict[str, Any] = {
        "OutcomesAndOutputs": output_value_text(report),
        "ModelType": _model_type(report),
        "InputDataSource": f"{(report.get('data') or {}).get('source', 'unknown')}: the EHR records of each index "
                           f"stay and the patient's history up to the index time.",
        "OutputAndInputDataTypes": _input_types(report),
        "DevelopmentDataCharacterization": criteria_text(report) + " " + demographics_text(report),
        "BiasMitigationApproaches": _text(facts, "bias_mitigation"),
        "OngoingMaintenance": _maintenance(facts),
    }
    _optional(ai, "Security", facts, "security")
    _optional(ai, "Transparency", facts, "transparency")
    transparency: dict[str, Any] = {"FundingSource": _text(facts, "funding_source")}
    _optional(transparency, "ThirdPartyInformation", facts, "third_party_information")
    transparency["StakeholdersConsulted"] = _text(facts, "stakeholders_consulted")
    resources: dict[str, Any] = {}
    _optional(resources, "EvaluationReferences", facts, "evaluation_references")
    _optional(resources, "ClinicalTrial", facts, "clinical_trial")
    resources["PeerReviewedPublications"] = _text(facts, "peer_reviewed_publications")
    _optional(resources, "ReimbursementStatus", facts, "reimbursement_status")
    resources["PatientConsentOrDisclosure"] = _text(facts, "patient_consent_or_disclosure")
    keywords = [k.strip() for k in facts.keywords or [] if not is_blank(k)] or [missing("keywords")]
    return {
        "BasicInfo": {"ModelName": model.get("name") or report.get("title") or str(report.get("primary")),
                      "ModelDeveloper": _text(facts, "developer_name"),
                      "DeveloperContact": _text(facts, "developer_contact")},
        "ReleaseInfo": release,
        "ModelSummary": {"Summary": _summary(report, facts), "Keywords": keywords},
        "UsesAndDirections": {"IntendedUseAndWorkflow": _text(facts, "intended_use"),
                              "PrimaryIntendedUsers": _text(facts, "intended_users"),
                              "HowToUse": how,
                              "TargetedPatientPopulation": _text(facts, "patient_population"),
                              "CautionedOutOfScopeSettings": _text(facts, "out_of_scope")},
        "Warnings": {"KnownRisksAndLimitations": _text(facts, "risks_and_limitations"),
                     "KnownBiasesOrEthicalConsiderations": _biases(report, facts),
                     "ClinicalRiskLevel": _text(facts, "clinical_risk_level")},
        "TrustIngredients": {"AISystemFacts": ai, "TransparencyInformation": transparency},
        "KeyMetrics": {"UsefulnessUsabilityEfficacy": _usefulness(report), "FairnessEquity": _fairness(report),
                       "SafetyReliability": _safety(report)},
        "Resources": resources,
        "Bibliography": _text(facts, "bibliography"),
    }


# ---- renderings ----

_LIST_ITEM = {"Keywords": "Keyword", "EHRCompatibility": "EHR", "Results": "MetricResult"}


def value_text(value_json_text: str) -> str:
    """A ValueJson string in words.

    >>> value_text('{"kind":"estimate_ci","estimate":0.74,"lower":0.71,"upper":0.77,"level":95}')
    '0.74 (95% CI 0.71 to 0.77)'
    """
    try:
        v = json.loads(value_json_text)
    except (TypeError, ValueError):
        return str(value_json_text)
    unit = v.get("unit")
    sep = "" if unit == "%" else " "
    tail = f"{sep}{unit}" if unit else ""
    if v.get("kind") == "estimate_ci":
        return f"{v.get('estimate')}{tail} ({v.get('level', 95)}% CI {v.get('lower')} to {v.get('upper')}{tail})"
    return "not computable" if v.get("value") is None else f"{v.get('value')}{tail}"


def words(key: str) -> str:
    """'AISystemFacts' -> 'AI System Facts'."""
    out = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", key)
    return out.replace(" And ", " and ").replace(" Or ", " or ").replace(" Of ", " of ")


def model_card_markdown(card: dict) -> str:
    """The card as Markdown: a heading per section, a paragraph per field, a table per metric's results.

    >>> print(model_card_markdown({"BasicInfo": {"ModelName": "m"}}).splitlines()[2])
    ## Basic Info
    """
    lines = [f"# Applied Model Card: {card.get('BasicInfo', {}).get('ModelName', '')}".rstrip(), ""]

    def field(key: str, value: Any, depth: int) -> None:
        if isinstance(value, dict):
            lines.extend([f"{'#' * depth} {words(key)}", ""])
            for k, v in value.items():
                field(k, v, depth + 1)
        elif key == "Results":
            lines.extend(["| Result | Value |", "|---|---|"])
            lines.extend(f"| {_cell(r.get('Label'))} | {_cell(value_text(r.get('ValueJson', '')))} |" for r in value)
            lines.append("")
        elif isinstance(value, list):
            lines.extend([f"**{words(key)}**: " + ", ".join(str(v) for v in value), ""])
        elif key == "Bibliography":
            lines.extend([f"{'#' * depth} Bibliography", "", "```bibtex", str(value), "```", ""])
        else:
            lines.extend([f"**{words(key)}**", "", str(value), ""])

    for key, value in card.items():
        field(key, value, 2)
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_card_xml(card: dict) -> str:
    """The card as a CHAI v0.2 instance document (elements in schema order; lists as Keyword, EHR, MetricResult).

    >>> model_card_xml({"Bibliography": "a & b"}).splitlines()[-2]
    '  <Bibliography>a &amp; b</Bibliography>'
    """
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f'<AppliedModelCard xmlns="{CHAI_NAMESPACE}">']

    def emit(key: str, value: Any, depth: int) -> None:
        pad = "  " * depth
        if isinstance(value, dict):
            out.append(f"{pad}<{key}>")
            for k, v in value.items():
                emit(k, v, depth + 1)
            out.append(f"{pad}</{key}>")
        elif isinstance(value, list):
            out.append(f"{pad}<{key}>")
            for item in value:
                emit(_LIST_ITEM.get(key, "Item"), item, depth + 1)
            out.append(f"{pad}</{key}>")
        else:
            out.append(f"{pad}<{key}>{escape(str(value))}</{key}>")

    for key, value in card.items():
        emit(key, value, 1)
    out.append("</AppliedModelCard>")
    return "\n".join(out) + "\n"
