"""Charlson and Elixhauser comorbidity from ICD-10(-CM) diagnosis codes, as pure data plus pure functions.

Category definitions are the ICD-10 coding algorithms of Quan H, Sundararajan V, Halfon P, et al. "Coding
algorithms for defining comorbidities in ICD-9-CM and ICD-10 administrative data", Med Care 2005;43:1130-9
(Table 1 for Charlson, Table 2 for Elixhauser's 31 categories). Weights are Charlson ME et al., J Chronic Dis
1987;40:373-83 (original weights) and van Walraven C et al., "A modification of the Elixhauser comorbidity
measures into a point system for hospital death using administrative data", Med Care 2009;47:626-33.

The tables are written out here rather than imported: the maintained PyPI port (comorbidipy) pulls in pandas,
and a SQL feature engine must reproduce them anyway (see `category_prefix_table`). They were cross-checked
against comorbidipy 0.5.0's `charlson_icd10_quan` / `elixhauser_icd10_quan` tables (identical prefix sets).

Quan's algorithms were written for WHO ICD-10; applied to ICD-10-CM they are used as published, so CM-only
codes outside Quan's prefixes (E08/E09 diabetes, C7A/C7B neuroendocrine, C4A Merkel cell) match nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "CHARLSON",
    "CHARLSON_HIERARCHY",
    "CHARLSON_WEIGHTS",
    "ELIXHAUSER",
    "ELIXHAUSER_HIERARCHY",
    "VAN_WALRAVEN_WEIGHTS",
    "category_prefix_table",
    "charlson_categories",
    "charlson_index",
    "elixhauser_categories",
    "normalize_code",
    "van_walraven_score",
    "van_walraven_weights",
]

ICD10_VOCABULARIES = frozenset({"ICD10CM", "ICD10"})  # event-store vocabulary prefixes, as in "ICD10CM/I50.9"


def _prefixes(spec: str) -> tuple[str, ...]:
    """Expand the paper's notation: 'I60-I69' is I60..I69, 'K703-K705' is K703..K705; other tokens stay as is."""
    out: list[str] = []
    for token in spec.split():
        lo, sep, hi = token.partition("-")
        if not sep:
            out.append(token)
            continue
        letter, width = lo[0], len(lo) - 1
        if hi[0] != letter or len(hi) != len(lo):
            raise ValueError(f"bad range {token!r}")
        out.extend(f"{letter}{n:0{width}d}" for n in range(int(lo[1:]), int(hi[1:]) + 1))
    return tuple(out)


# Quan 2005, Table 1 (ICD-10 column). Prefixes are stored without dots: "I252" is ICD-10 I25.2 and below.
CHARLSON: dict[str, tuple[str, ...]] = {
    "myocardial_infarction": _prefixes("I21 I22 I252"),
    "congestive_heart_failure": _prefixes("I099 I110 I130 I132 I255 I420 I425-I429 I43 I50 P290"),
    "peripheral_vascular": _prefixes("I70 I71 I731 I738 I739 I771 I790 I792 K551 K558 K559 Z958 Z959"),
    "cerebrovascular": _prefixes("G45 G46 H340 I60-I69"),
    "dementia": _prefixes("F00-F03 F051 G30 G311"),
    "chronic_pulmonary": _prefixes("I278 I279 J40-J47 J60-J67 J684 J701 J703"),
    "rheumatic": _prefixes("M05 M06 M315 M32-M34 M351 M353 M360"),
    "peptic_ulcer": _prefixes("K25-K28"),
    "mild_liver": _prefixes("B18 K700-K703 K709 K713-K715 K717 K73 K74 K760 K762-K764 K768 K769 Z944"),
    "diabetes_uncomplicated": _prefixes(
        "E100 E101 E106 E108 E109 E110 E111 E116 E118 E119 E120 E121 E126 E128 E129 "
        "E130 E131 E136 E138 E139 E140 E141 E146 E148 E149"
    ),
    "diabetes_complicated": _prefixes("E102-E105 E107 E112-E115 E117 E122-E125 E127 E132-E135 E137 E142-E145 E147"),
    "hemiplegia_paraplegia": _prefixes("G041 G114 G801 G802 G81 G82 G830-G834 G839"),
    "renal": _prefixes("I120 I131 N032-N037 N052-N057 N18 N19 N250 Z490-Z492 Z940 Z992"),
    "malignancy": _prefixes("C00-C26 C30-C34 C37-C41 C43 C45-C58 C60-C76 C81-C85 C88 C90-C97"),
    "severe_liver": _prefixes("I850 I859 I864 I982 K704 K711 K721 K729 K765-K767"),
    "metastatic_solid_tumour": _prefixes("C77-C80"),
    "hiv_aids": _prefixes("B20-B22 B24"),
}

# Charlson 1987 weights, the pairing used with Quan's algorithm (Quan 2005; Quan 2011 reweighted, not used here).
CHARLSON_WEIGHTS: dict[str, int] = {
    "myocardial_infarction": 1,
    "congestive_heart_failure": 1,
    "peripheral_vascular": 1,
    "cerebrovascular": 1,
    "dementia": 1,
    "chronic_pulmonary": 1,
    "rheumatic": 1,
    "peptic_ulcer": 1,
    "mild_liver": 1,
    "diabetes_uncomplicated": 1,
    "diabetes_complicated": 2,
    "hemiplegia_paraplegia": 2,
    "renal": 2,
    "malignancy": 2,
    "severe_liver": 3,
    "metastatic_solid_tumour": 6,
    "hiv_aids": 6,
}

# (dominant, dominated): when both are present only the dominant category counts, so a patient is never
# scored twice for one disease at two severities.
CHARLSON_HIERARCHY: tuple[tuple[str, str], ...] = (
    ("severe_liver", "mild_liver"),
    ("diabetes_complicated", "diabetes_uncomplicated"),
    ("metastatic_solid_tumour", "malignancy"),
)

# Quan 2005, Table 2 (ICD-10 column): Elixhauser's 30 comorbidities with hypertension split in two, 31 in all.
ELIXHAUSER: dict[str, tuple[str, ...]] = {
    "congestive_heart_failure": CHARLSON["congestive_heart_failure"],
    "cardiac_arrhythmias": _prefixes("I441-I443 I456 I459 I47-I49 R000 R001 R008 T821 Z450 Z950"),
    "valvular_disease": _prefixes("A520 I05-I08 I091 I098 I34-I39 Q230-Q233 Z952-Z954"),
    "pulmonary_circulation": _prefixes("I26 I27 I280 I288 I289"),
    "peripheral_vascular": CHARLSON["peripheral_vascular"],
    "hypertension_uncomplicated": _prefixes("I10"),
    "hypertension_complicated": _prefixes("I11-I13 I15"),
    "paralysis": CHARLSON["hemiplegia_paraplegia"],
    "other_neurological": _prefixes("G10-G13 G20-G22 G254 G255 G312 G318 G319 G32 G35-G37 G40 G41 G931 G934 R470 R56"),
    "chronic_pulmonary": CHARLSON["chronic_pulmonary"],
    "diabetes_uncomplicated": _prefixes("E100 E101 E109 E110 E111 E119 E120 E121 E129 E130 E131 E139 E140 E141 E149"),
    "diabetes_complicated": _prefixes("E102-E108 E112-E118 E122-E128 E132-E138 E142-E148"),
    "hypothyroidism": _prefixes("E00-E03 E890"),
    "renal_failure": _prefixes("I120 I131 N18 N19 N250 Z490-Z492 Z940 Z992"),
    "liver_disease": _prefixes("B18 I85 I864 I982 K70 K711 K713-K715 K717 K72-K74 K760 K762-K769 Z944"),
    "peptic_ulcer": _prefixes("K257 K259 K267 K269 K277 K279 K287 K289"),
    "hiv_aids": _prefixes("B20-B22 B24"),
    "lymphoma": _prefixes("C81-C85 C88 C96 C900 C902"),
    "metastatic_cancer": _prefixes("C77-C80"),
    "solid_tumour": _prefixes("C00-C26 C30-C34 C37-C41 C43 C45-C58 C60-C76 C97"),
    "rheumatoid_arthritis": _prefixes("L940 L941 L943 M05 M06 M08 M120 M123 M30 M310-M313 M32-M35 M45 M461 M468 M469"),
    "coagulopathy": _prefixes("D65-D68 D691 D693-D696"),
    "obesity": _prefixes("E66"),
    "weight_loss": _prefixes("E40-E46 R634 R64"),
    "fluid_electrolyte": _prefixes("E222 E86 E87"),
    "blood_loss_anaemia": _prefixes("D500"),
    "deficiency_anaemia": _prefixes("D508 D509 D51-D53"),
    "alcohol_abuse": _prefixes("F10 E52 G621 I426 K292 K700 K703 K709 T51 Z502 Z714 Z721"),
    "drug_abuse": _prefixes("F11-F16 F18 F19 Z715 Z722"),
    "psychoses": _prefixes("F20 F22-F25 F28 F29 F302 F312 F315"),
    "depression": _prefixes("F204 F313-F315 F32 F33 F341 F412 F432"),
}

# van Walraven 2009 point weights (hypertension is one item there, weight 0, so both halves get 0).
VAN_WALRAVEN_WEIGHTS: dict[str, int] = {
    "congestive_heart_failure": 7,
    "cardiac_arrhythmias": 5,
    "valvular_disease": -1,
    "pulmonary_circulation": 4,
    "peripheral_vascular": 2,
    "hypertension_uncomplicated": 0,
    "hypertension_complicated": 0,
    "paralysis": 7,
    "other_neurological": 6,
    "chronic_pulmonary": 3,
    "diabetes_uncomplicated": 0,
    "diabetes_complicated": 0,
    "hypothyroidism": 0,
    "renal_failure": 5,
    "liver_disease": 11,
    "peptic_ulcer": 0,
    "hiv_aids": 0,
    "lymphoma": 9,
    "metastatic_cancer": 12,
    "solid_tumour": 4,
    "rheumatoid_arthritis": 0,
    "coagulopathy": 3,
    "obesity": -4,
    "weight_loss": 6,
    "fluid_electrolyte": 5,
    "blood_loss_anaemia": -2,
    "deficiency_anaemia": -2,
    "alcohol_abuse": 0,
    "drug_abuse": -7,
    "psychoses": 0,
    "depression": -3,
}
van_walraven_weights = VAN_WALRAVEN_WEIGHTS  # the name the feature spec uses

# Elixhauser 1998 / AHRQ convention: complicated diabetes and metastatic cancer supersede their milder forms;
# complicated hypertension supersedes uncomplicated (score-neutral: both weigh 0).
ELIXHAUSER_HIERARCHY: tuple[tuple[str, str], ...] = (
    ("diabetes_complicated", "diabetes_uncomplicated"),
    ("metastatic_cancer", "solid_tumour"),
    ("hypertension_complicated", "hypertension_uncomplicated"),
)


def normalize_code(code: str) -> str | None:
    """Upper-case, dot-free ICD-10 code ('ICD10CM/e11.65' -> 'E1165'); None for another vocabulary or blank.

    >>> normalize_code("ICD10CM/I50.9"), normalize_code(" n18.30 "), normalize_code("LOINC/2951-2")
    ('I509', 'N1830', None)
    """
    vocab, sep, rest = code.strip().rpartition("/")
    if sep and vocab.upper() not in ICD10_VOCABULARIES:
        return None
    out = rest.replace(".", "").replace(" ", "").upper()
    return out or None


def _index(table: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Bucket (prefix, category) by the prefix's first three characters: every Quan prefix has at least three."""
    buckets: dict[str, list[tuple[str, str]]] = {}
    for category, prefixes in table.items():
        for p in prefixes:
            buckets.setdefault(p[:3], []).append((p, category))
    return {k: tuple(v) for k, v in buckets.items()}


_CHARLSON_INDEX = _index(CHARLSON)
_ELIXHAUSER_INDEX = _index(ELIXHAUSER)


def _categories(
    codes: Iterable[str], index: Mapping[str, tuple[tuple[str, str], ...]], hierarchy: tuple[tuple[str, str], ...]
) -> set[str]:
    found: set[str] = set()
    for raw in codes:
        code = normalize_code(raw)
        if code is None:
            continue
        found.update(cat for p, cat in index.get(code[:3], ()) if code.startswith(p))
    return found - {low for high, low in hierarchy if high in found}


def charlson_categories(codes: Iterable[str]) -> set[str]:
    """Charlson categories present in `codes` (Quan 2005 ICD-10), after the severity hierarchy.

    >>> sorted(charlson_categories(["K70.30", "K72.10", "I50.9"]))  # mild + severe liver counts severe only
    ['congestive_heart_failure', 'severe_liver']
    """
    return _categories(codes, _CHARLSON_INDEX, CHARLSON_HIERARCHY)


def charlson_index(codes: Iterable[str]) -> int:
    """Charlson comorbidity index (1987 weights, no age points): 0 with no codes, at most 29.

    >>> charlson_index(["I50.9", "E11.22", "N18.30", "J44.9"])  # CHF 1 + complicated DM 2 + renal 2 + COPD 1
    6
    """
    return sum(CHARLSON_WEIGHTS[c] for c in charlson_categories(codes))


def elixhauser_categories(codes: Iterable[str]) -> set[str]:
    """Elixhauser categories present in `codes` (Quan 2005 ICD-10, 31 categories), after the hierarchy.

    >>> sorted(elixhauser_categories(["I10", "I11.0"]))  # I11.0 is hypertensive heart disease with failure
    ['congestive_heart_failure', 'hypertension_complicated']
    """
    return _categories(codes, _ELIXHAUSER_INDEX, ELIXHAUSER_HIERARCHY)


def van_walraven_score(codes: Iterable[str]) -> int:
    """van Walraven 2009 Elixhauser point score; weights can be negative, so the range is -19 to 85.

    >>> van_walraven_score(["I50.9", "E11.22", "N18.30", "J44.9"])  # CHF 7 + DM 0 + renal 5 + pulmonary 3
    15
    """
    return sum(VAN_WALRAVEN_WEIGHTS[c] for c in elixhauser_categories(codes))


def category_prefix_table() -> list[tuple[str, str, str]]:
    """(index, category, prefix) rows, index in {'charlson', 'elixhauser'}, for a SQL engine to join codes on.

    A code matches a prefix when the code with its dot removed (and any 'ICD10CM/' vocabulary prefix stripped,
    upper-cased) starts with the prefix with its dot removed; prefixes here are already dot-free. A code may
    match several categories. After the join, drop each dominated category whose dominant one is present
    (`CHARLSON_HIERARCHY`, `ELIXHAUSER_HIERARCHY`), then sum the weights.

    >>> rows = category_prefix_table()
    >>> ("charlson", "myocardial_infarction", "I252") in rows, len({r[0] for r in rows})
    (True, 2)
    """
    rows = [("charlson", c, p) for c, ps in CHARLSON.items() for p in ps]
    rows += [("elixhauser", c, p) for c, ps in ELIXHAUSER.items() for p in ps]
    return rows
