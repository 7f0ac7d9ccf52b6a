"""Display names for the coded values of a feature table, from public vocabularies.

Every table here is a published code system, so that a real hospital's data displays as well as the synthetic one:
FHIR AdministrativeGender, CDC Race & Ethnicity (with HL7 v3 NullFlavor), ISO 639 / BCP 47 languages, the Source of
Payment Typology (SOPT, hierarchical: an unlisted code shows as its nearest listed ancestor), HL7 discharge
disposition and NUBC patient discharge status, HL7 admit source, ICD-10-CM (common categories, then chapters),
and LOINC answer lists (the AHC HRSN and PRAPARE
housing answers, yes/no, declined).

`display(attribute, code)` never raises: an unknown attribute or code shows as the code itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["VOCABULARIES", "display", "icd10cm_name", "normalize_code", "phrase_for_code", "vocabulary_of"]

# FHIR R4 AdministrativeGender (http://hl7.org/fhir/administrative-gender), plus the HL7 v2 table 0001 letters.
SEX = {"male": "Male", "female": "Female", "other": "Other", "unknown": "Unknown",
       "M": "Male", "F": "Female", "O": "Other", "U": "Unknown", "A": "Ambiguous", "N": "Not applicable"}

# HL7 v3 NullFlavor codes that US Core allows in race, ethnicity and other demographics.
NULL_FLAVORS = {"UNK": "Unknown", "ASKU": "Asked but unknown", "NASK": "Not asked", "OTH": "Other",
                "NI": "No information", "NA": "Not applicable", "MSK": "Masked"}

# CDC Race & Ethnicity code system (urn:oid:2.16.840.1.113883.6.238): the OMB categories.
RACE = {
    "1002-5": "American Indian or Alaska Native",
    "2028-9": "Asian",
    "2054-5": "Black or African American",
    "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2106-3": "White",
    "2131-1": "Other Race",
    **NULL_FLAVORS,
}
ETHNICITY = {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino", **NULL_FLAVORS}

# ISO 639-1 (and a few ISO 639-2/3 codes that US registration systems carry), as used in BCP 47 tags.
LANGUAGE = {
    "am": "Amharic", "ar": "Arabic", "bn": "Bengali", "bs": "Bosnian", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "km": "Khmer",
    "ko": "Korean", "lo": "Lao", "ms": "Malay", "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "so": "Somali", "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "ti": "Tigrinya", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "yi": "Yiddish", "zh": "Chinese",
    "ase": "American Sign Language", "cmn": "Mandarin Chinese", "fil": "Filipino", "hmn": "Hmong",
    "kea": "Cape Verdean Creole", "sgn": "Sign language", "yue": "Cantonese", "und": "Undetermined",
}

# Source of Payment Typology (https://nahdo.org/sopt, PHDSC/NAHDO, CDC PHIN VADS OID 2.16.840.1.113883.3.221.5):
# the top-level categories and their main subcategories.
PAYER = {
    "1": "Medicare", "11": "Medicare (managed care)", "111": "Medicare HMO", "112": "Medicare PPO",
    "113": "Medicare POS", "119": "Medicare managed care, other", "12": "Medicare (non-managed care)",
    "121": "Medicare FFS", "122": "Medicare drug benefit", "123": "Medicare medical savings account",
    "129": "Medicare non-managed care, other", "13": "Medicare hospice",
    "14": "Dual eligibility Medicare/Medicaid organization", "19": "Medicare, other",
    "2": "Medicaid", "21": "Medicaid (managed care)", "211": "Medicaid HMO", "212": "Medicaid PPO",
    "213": "Medicaid PCCM", "219": "Medicaid managed care, other", "22": "Medicaid (non-managed care plan)",
    "23": "Medicaid/SCHIP", "24": "Medicaid applicant", "25": "Medicaid, out of state",
    "26": "Medicaid, long-term care", "29": "Medicaid, other",
    "3": "Other government", "31": "Department of Defense", "311": "TRICARE (CHAMPUS)",
    "32": "Department of Veterans Affairs", "33": "Indian Health Service or Tribe", "34": "HRSA program",
    "35": "Black Lung", "36": "State government", "37": "Local government",
    "38": "Other government (federal, state, local not specified)", "39": "Other federal",
    "4": "Department of corrections", "41": "Corrections, federal", "42": "Corrections, state",
    "43": "Corrections, local", "44": "Corrections, unknown level",
    "5": "Private health insurance", "51": "Managed care (private)", "52": "Private health insurance, indemnity",
    "53": "Private health insurance, not otherwise specified", "54": "Organized delivery system",
    "55": "Small employer purchasing group", "56": "Specialized stand-alone plan", "59": "Other private insurance",
    "6": "Blue Cross/Blue Shield", "61": "Blue Cross managed care", "62": "Blue Cross indemnity",
    "63": "Blue Cross, out of state", "64": "Blue Cross, unspecified", "69": "Blue Cross, other",
    "7": "Managed care, unspecified", "71": "HMO", "72": "PPO", "73": "POS", "79": "Other managed care",
    "8": "No payment from an organization", "81": "Self-pay", "82": "No charge", "821": "Charity",
    "822": "Professional courtesy", "823": "Research/clinical trial", "83": "Refusal to pay/bad debt",
    "84": "Hill-Burton free care", "85": "Research/donor", "89": "No payment, other",
    "9": "Miscellaneous/other", "91": "Foreign national", "92": "Other (non-government)",
    "93": "Disability insurance", "94": "Long-term care insurance", "95": "Workers' compensation",
    "96": "Auto insurance (no fault)", "98": "Other specified", "99": "No typology code available",
    "9999": "Unavailable/unknown",
}

# HL7 discharge disposition (http://terminology.hl7.org/CodeSystem/discharge-disposition), FHIR R4.
DISPOSITION_HL7 = {
    "home": "Home", "alt-home": "Alternative home", "other-hcf": "Other healthcare facility", "hosp": "Hospice",
    "long": "Long-term care", "aadvice": "Left against advice", "exp": "Expired", "psy": "Psychiatric hospital",
    "rehab": "Rehabilitation", "snf": "Skilled nursing facility", "oth": "Other",
}
# NUBC UB-04 patient discharge status (FL 17), which US claims carry and some feeds send alone.
DISPOSITION_NUBC = {
    "01": "Home or self care", "02": "Short-term general hospital", "03": "Skilled nursing facility",
    "04": "Intermediate care facility", "05": "Cancer center or children's hospital", "06": "Home health service",
    "07": "Left against medical advice", "09": "Admitted as an inpatient to this hospital", "20": "Expired",
    "21": "Court/law enforcement", "30": "Still a patient", "40": "Expired at home",
    "41": "Expired in a medical facility",
    "42": "Expired, place unknown", "43": "Federal health care facility", "50": "Hospice, home",
    "51": "Hospice, medical facility", "61": "Swing bed", "62": "Inpatient rehabilitation facility",
    "63": "Long-term care hospital", "64": "Nursing facility (Medicaid certified)", "65": "Psychiatric hospital",
    "66": "Critical access hospital", "69": "Designated disaster alternative care site",
    "70": "Other health care institution",
}
DISPOSITION = {**DISPOSITION_HL7, **DISPOSITION_NUBC}

# HL7 admit source (http://terminology.hl7.org/CodeSystem/admit-source), FHIR R4.
ADMIT_SOURCE = {
    "hosp-trans": "Transferred from other hospital", "emd": "From accident/emergency department",
    "outp": "From outpatient department", "born": "Born in hospital", "gp": "General practitioner referral",
    "mp": "Medical practitioner/physician referral", "nursing": "From nursing home",
    "psych": "From psychiatric hospital", "rehab": "From rehabilitation facility", "other": "Other",
}

# LOINC answers (LA codes): the housing answers of LOINC 71802-3 "Housing status" in the AHC HRSN screening tool
# (LA31993-1/LA31994-9/LA31995-6) and in PRAPARE (LA30189-7/LA30190-5), and common generic answers.
LOINC_ANSWER = {
    "LA31993-1": "I have a steady place to live",
    "LA31994-9": "I have a place to live today, but I am worried about losing it in the future",
    "LA31995-6": "I do not have a steady place to live (I am temporarily staying with others, in a hotel, in a "
                 "shelter, living outside on the street, on a beach, in a car, abandoned building, bus or train "
                 "station, or in a park)",
    "LA30189-7": "I have housing",
    "LA30190-5": "I do not have housing (staying with others, in a hotel, in a shelter, living outside on the "
                 "street, on a beach, in a car, or in a park)",
    "LA30122-8": "I choose not to answer this question",
    "LA33-6": "Yes", "LA32-8": "No", "LA4489-6": "Unknown", "LA12688-0": "Don't know",
}
HOUSING = LOINC_ANSWER

# ICD-10-CM (https://www.cms.gov/medicare/coding-billing/icd-10-codes): short names of the categories (and a few
# codes) that most often head an adult inpatient stay, and the chapters for every other code.
ICD10CM_NAMES = {
    "A41": "sepsis", "A40": "sepsis", "A04.7": "C. difficile enterocolitis", "A08": "viral gastroenteritis",
    "B20": "HIV disease", "C18": "colon cancer", "C25": "pancreatic cancer", "C34": "lung cancer",
    "C50": "breast cancer", "C61": "prostate cancer", "C78": "metastatic cancer", "C79": "metastatic cancer",
    "C90": "multiple myeloma", "C92": "myeloid leukemia", "C83": "lymphoma", "C85": "lymphoma", "D62": "acute anemia",
    "D64": "anemia", "D70": "neutropenia", "E10": "type 1 diabetes", "E11": "type 2 diabetes",
    "E44": "protein-calorie malnutrition", "E66": "obesity", "E86": "dehydration",
    "E87": "electrolyte or acid-base disorder", "E87.1": "hyponatremia", "E87.6": "hypokalemia",
    "F03": "dementia", "F05": "delirium", "F10": "alcohol use disorder", "F11": "opioid use disorder",
    "F20": "schizophrenia", "F32": "depression", "F33": "recurrent depression", "G40": "epilepsy",
    "G45": "transient ischemic attack", "G93.4": "encephalopathy", "I10": "hypertension",
    "I11": "hypertensive heart disease", "I13": "hypertensive heart and kidney disease", "I16": "hypertensive crisis",
    "I20": "angina", "I21": "acute myocardial infarction", "I25": "chronic ischemic heart disease",
    "I26": "pulmonary embolism", "I35": "aortic valve disease", "I42": "cardiomyopathy",
    "I47": "paroxysmal tachycardia", "I48": "atrial fibrillation or flutter", "I49": "cardiac arrhythmia",
    "I50": "heart failure", "I61": "intracerebral hemorrhage", "I63": "ischemic stroke",
    "I69": "sequelae of stroke", "I70": "atherosclerosis", "I71": "aortic aneurysm",
    "I73": "peripheral vascular disease", "I82": "venous thrombosis", "J10": "influenza", "J11": "influenza",
    "J12": "viral pneumonia", "J13": "pneumococcal pneumonia", "J15": "bacterial pneumonia", "J18": "pneumonia",
    "J20": "acute bronchitis", "J44": "COPD", "J45": "asthma", "J69": "aspiration pneumonitis", "J80": "ARDS",
    "J84": "interstitial lung disease", "J90": "pleural effusion", "J96": "respiratory failure",
    "K25": "gastric ulcer", "K26": "duodenal ulcer", "K29": "gastritis", "K35": "appendicitis",
    "K56": "intestinal obstruction", "K57": "diverticular disease", "K70": "alcoholic liver disease",
    "K72": "hepatic failure", "K74": "cirrhosis", "K76.82": "hepatic encephalopathy", "K80": "gallstones",
    "K81": "cholecystitis", "K85": "acute pancreatitis", "K92.0": "hematemesis", "K92.1": "melena",
    "K92.2": "gastrointestinal bleed", "L03": "cellulitis", "L89": "pressure ulcer", "M16": "hip osteoarthritis",
    "M17": "knee osteoarthritis", "M54": "back pain", "M86": "osteomyelitis", "N10": "pyelonephritis",
    "N17": "acute kidney injury", "N18": "chronic kidney disease", "N39.0": "urinary tract infection",
    "R06": "breathing abnormality", "R07": "chest pain", "R10": "abdominal pain", "R41": "altered mental status",
    "R50": "fever", "R55": "syncope", "S06": "intracranial injury", "S32": "lumbar spine or pelvic fracture",
    "S72": "femur fracture", "T81": "complication of a procedure", "T82": "cardiac or vascular device complication",
    "T84": "orthopedic device complication", "U07.1": "COVID-19", "Z47": "orthopedic aftercare",
    "Z51.11": "chemotherapy",
}
ICD10CM_CHAPTERS = (  # (first, last) category, short chapter name
    ("A00", "B99", "infectious disease"), ("C00", "D49", "neoplasm"), ("D50", "D89", "blood or immune disorder"),
    ("E00", "E89", "endocrine or metabolic disease"), ("F01", "F99", "mental or behavioral disorder"),
    ("G00", "G99", "nervous system disease"), ("H00", "H59", "eye disease"), ("H60", "H95", "ear disease"),
    ("I00", "I99", "circulatory disease"), ("J00", "J99", "respiratory disease"), ("K00", "K95", "digestive disease"),
    ("L00", "L99", "skin disease"), ("M00", "M99", "musculoskeletal disease"),
    ("N00", "N99", "genitourinary disease"), ("O00", "O9A", "pregnancy-related condition"),
    ("P00", "P96", "perinatal condition"), ("Q00", "Q99", "congenital anomaly"),
    ("R00", "R99", "symptom or abnormal finding"), ("S00", "T88", "injury or poisoning"),
    ("U00", "U85", "special-purpose code"), ("V00", "Y99", "external cause"),
    ("Z00", "Z99", "health-services encounter"),
)
_ICD10CM = re.compile(r"^([A-Z][0-9][0-9A-Z])\.?([0-9A-Z]{0,4})$")


def icd10cm_name(code: str) -> tuple[str | None, str | None]:
    """(short name of the code's category or of the code itself, short chapter name) for an ICD-10-CM code.

    >>> icd10cm_name("I50.23"), icd10cm_name("N39.0")
    (('heart failure', 'circulatory disease'), ('urinary tract infection', 'genitourinary disease'))
    >>> icd10cm_name("I99.8"), icd10cm_name("84114007")
    ((None, 'circulatory disease'), (None, None))
    """
    m = _ICD10CM.match(code.strip().upper())
    if not m:
        return None, None
    cat, rest = m.group(1), m.group(2)
    name = None
    for n in range(len(rest), -1, -1):  # the most specific listed code: K92.2 before K92
        key = cat + ("." + rest[:n] if n else "")
        if key in ICD10CM_NAMES:
            name = ICD10CM_NAMES[key]
            break
    chapter = next((c for lo, hi, c in ICD10CM_CHAPTERS if lo <= cat <= hi), None)
    return name, chapter


VOCABULARIES: dict[str, Mapping[str, str]] = {
    "sex": SEX, "race": RACE, "ethnicity": ETHNICITY, "language": LANGUAGE, "payer": PAYER,
    "discharge_disposition": DISPOSITION, "admit_source": ADMIT_SOURCE, "housing": HOUSING,
    "loinc_answer": LOINC_ANSWER, "diagnosis": ICD10CM_NAMES,
}

# Short clinical phrases for a coded value (the CDS card says "discharged to a skilled nursing facility", not
# "discharge disposition: Skilled nursing facility").
_PHRASES: dict[str, dict[str, str]] = {
    "sex": {"male": "male", "female": "female", "other": "sex other than male or female", "unknown": "sex unknown",
            "M": "male", "F": "female", "O": "sex other than male or female", "U": "sex unknown"},
    "discharge_disposition": {
        "home": "discharged home", "alt-home": "discharged to an alternative home",
        "other-hcf": "transferred to another healthcare facility", "hosp": "discharged to hospice",
        "long": "discharged to long-term care", "aadvice": "left against medical advice",
        "exp": "died during the stay", "psy": "transferred to a psychiatric hospital",
        "rehab": "discharged to rehabilitation", "snf": "discharged to a skilled nursing facility",
        "oth": "other discharge disposition",
        "01": "discharged home", "02": "transferred to another hospital",
        "03": "discharged to a skilled nursing facility", "04": "discharged to an intermediate care facility",
        "05": "transferred to a cancer center or children's hospital", "06": "discharged home with home health care",
        "07": "left against medical advice", "09": "admitted as an inpatient", "20": "died during the stay",
        "21": "discharged to law enforcement", "30": "still a patient", "40": "died at home under hospice care",
        "41": "died in a facility under hospice care", "42": "died under hospice care",
        "43": "transferred to a federal health care facility", "50": "discharged to hospice at home",
        "51": "discharged to a hospice facility", "61": "discharged to a swing bed",
        "62": "discharged to inpatient rehabilitation", "63": "transferred to a long-term care hospital",
        "64": "discharged to a nursing facility", "65": "transferred to a psychiatric hospital",
        "66": "transferred to a critical access hospital", "69": "discharged to an alternative care site",
        "70": "transferred to another healthcare facility",
    },
    "admit_source": {
        "hosp-trans": "transferred from another hospital", "emd": "admitted from the emergency department",
        "outp": "admitted from an outpatient clinic", "born": "born in the hospital",
        "gp": "referred by a general practitioner", "mp": "referred by a physician",
        "nursing": "admitted from a nursing home", "psych": "admitted from a psychiatric hospital",
        "rehab": "admitted from a rehabilitation facility", "other": "other admission source",
    },
    "housing": {
        "LA31993-1": "stable housing", "LA31994-9": "worried about losing housing",
        "LA31995-6": "no stable housing", "LA30189-7": "stable housing", "LA30190-5": "no stable housing",
        "LA30122-8": "declined to answer about housing",
    },
}

# Which vocabulary an attribute, column, prefix or code-system URL speaks.
_ALIASES = {
    "sex": "sex", "gender": "sex", "administrative_sex": "sex", "birth_sex": "sex",
    "race": "race", "ethnicity": "ethnicity",
    "language": "language", "preferred_language": "language",
    "payer": "payer", "payer_type": "payer", "insurance": "payer", "coverage": "payer", "sopt": "payer",
    "discharge_disposition": "discharge_disposition", "disposition": "discharge_disposition",
    "discharge": "discharge_disposition", "discharge_status": "discharge_disposition",
    "discharge_disposition_nubc": "discharge_disposition",
    "admit_source": "admit_source", "admission_source": "admit_source",
    "housing": "housing", "housing_status": "housing",
    "loinc_answer": "loinc_answer",
    "principal_diagnosis": "diagnosis", "diagnosis": "diagnosis", "reason_code": "diagnosis", "icd10cm": "diagnosis",
}
_PREFIXES = {"GENDER/": "sex", "RACE/": "race", "ETHNICITY/": "ethnicity", "LANGUAGE/": "language",
             "SOPT/": "payer", "DISCHARGE/": "discharge_disposition", "LOINC/71802-3": "housing",
             "ICD10CM/": "diagnosis"}
_SYSTEMS = {
    "http://hl7.org/fhir/administrative-gender": "sex", "urn:oid:2.16.840.1.113883.6.238": "race",
    "urn:ietf:bcp:47": "language", "https://nahdo.org/sopt": "payer",
    "http://terminology.hl7.org/CodeSystem/discharge-disposition": "discharge_disposition",
    "https://www.nubc.org/CodeSystem/PatDischargeStatus": "discharge_disposition",
    "http://terminology.hl7.org/CodeSystem/admit-source": "admit_source",
    "http://hl7.org/fhir/sid/icd-10-cm": "diagnosis",
}
_VOCAB_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]*/")
_MISSING = "Unknown"


def vocabulary_of(name: str | None) -> str | None:
    """The vocabulary key for an attribute, column name, code prefix or code-system URL, or None.

    >>> vocabulary_of("discharge_disposition"), vocabulary_of("SOPT/"), vocabulary_of("shoe_size")
    ('discharge_disposition', 'payer', None)
    """
    if not name:
        return None
    text = str(name).strip()
    if text in _SYSTEMS:
        return _SYSTEMS[text]
    for prefix, vocab in _PREFIXES.items():
        if text == prefix or text == prefix.rstrip("/"):
            return vocab
    return _ALIASES.get(text.lower().replace("-", "_").replace(" ", "_"))


def normalize_code(code: object) -> str | None:
    """A code as text without its vocabulary prefix ("RACE/2054-5" -> "2054-5"; 1.0 -> "1"); None if missing."""
    if code is None:
        return None
    if isinstance(code, float | int) and not isinstance(code, bool):
        if isinstance(code, float):
            if math.isnan(code):
                return None
            if code.is_integer():
                code = int(code)
        return str(code)
    try:
        if hasattr(code, "item") and not isinstance(code, str | bytes):
            return normalize_code(code.item())  # numpy scalar
        text = code.decode() if isinstance(code, bytes) else str(code)
    except Exception:
        return None
    text = text.strip()
    if not text or text.lower() in ("nan", "none", "<na>", "nat"):
        return None
    return _VOCAB_PREFIX.sub("", text, count=1)


def _lookup(vocab: str, code: str) -> str | None:
    if vocab == "diagnosis":
        name, chapter = icd10cm_name(code)
        text = name or chapter
        return f"{text[0].upper()}{text[1:]} ({code})" if text else None
    table = VOCABULARIES[vocab]
    if code in table:
        return table[code]
    if vocab == "language":
        primary = code.replace("_", "-").split("-")[0].lower()  # BCP 47: "es-US" -> "es"
        return table.get(primary)
    if vocab == "payer" and code.isdigit():
        for n in range(len(code) - 1, 0, -1):  # SOPT is hierarchical: "121" -> "12" -> "1"
            if code[:n] in table:
                return table[code[:n]]
        return None
    if vocab == "discharge_disposition" and code.isdigit() and len(code) == 1:
        return table.get("0" + code)  # NUBC codes are two digits ("1" -> "01")
    return table.get(code.lower()) or table.get(code.upper())


def display(attribute_or_column: str | None, code: object) -> str:
    """The human label of a coded value: `display("race", "2054-5")` is "Black or African American".

    `attribute_or_column` names the vocabulary: an attribute or column (sex, race, ethnicity, language, payer,
    discharge_disposition, admit_source, housing), a code prefix (RACE/, SOPT/...) or a code-system URL. A code may
    carry its vocabulary prefix ("LOINC/LA31993-1"). A LOINC answer code (LA...) displays whatever the attribute.
    An unknown attribute or code shows as the code itself; a missing code as "Unknown". Never raises.

    >>> display("payer", "81"), display("language", "es-US"), display("site", "B7")
    ('Self-pay', 'Spanish', 'B7')
    """
    try:
        text = normalize_code(code)
        if text is None:
            return _MISSING
        raw = str(code).strip()
        vocab = vocabulary_of(attribute_or_column)
        if vocab is None and (m := _VOCAB_PREFIX.match(raw)):
            vocab = _PREFIXES.get(m.group(0))  # "RACE/2054-5" names its own vocabulary
        if vocab is None and text.startswith("LA") and text[2:3].isdigit():
            vocab = "loinc_answer"
        if vocab is None:
            return text
        found = _lookup(vocab, text)
        if found is None and vocab in ("housing", "loinc_answer") and text in LOINC_ANSWER:
            found = LOINC_ANSWER[text]
        return found if found is not None else text
    except Exception:
        return str(code)


def phrase_for_code(vocab: str | None, code: object) -> str | None:
    """A short clinical phrase for a coded value where the vocabulary has one (dispositions, admit sources, sex,
    housing), else None."""
    if vocab is None:
        return None
    text = normalize_code(code)
    if text is None:
        return None
    if vocab == "diagnosis":
        name, chapter = icd10cm_name(text)
        if name:
            return f"admitted for {name} ({text})"
        return f"principal diagnosis {text} ({chapter})" if chapter else None
    table = _PHRASES.get(vocab)
    if not table:
        return None
    if text in table:
        return table[text]
    if vocab == "discharge_disposition" and text.isdigit() and len(text) == 1:
        return table.get("0" + text)
    return table.get(text.lower())
