"""Codes the synthetic hospital speaks: FHIR R4 code systems, LOINC, SNOMED CT, ICD-10-CM, RxNorm, UCUM.

Everything here is static data. Codes were chosen to be the ones a US hospital feed really carries, so
that downstream stages (ingest, comorbidity indices, LACE/HOSPITAL scores) meet them as they would in a
real EHR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CDC_RACE = "urn:oid:2.16.840.1.113883.6.238"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
ADMIT_SOURCE = "http://terminology.hl7.org/CodeSystem/admit-source"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
NUBC_DISCHARGE = "https://www.nubc.org/CodeSystem/PatDischargeStatus"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
ID_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
SOPT = "https://nahdo.org/sopt"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
MEDREQ_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
DOCREF_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
NPI = "http://hl7.org/fhir/sid/us-npi"
SSN = "http://hl7.org/fhir/sid/us-ssn"
BCP47 = "urn:ietf:bcp:47"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
# Identifier systems of the fictional health system (".example" is reserved for documentation).
MRN_SYSTEM = "https://fhir.careloop-health.example/sid/mrn"
MA_DRIVERS_LICENSE = "urn:oid:2.16.840.1.113883.4.3.25"
MEMBER_ID_SYSTEM = "https://fhir.careloop-health.example/sid/member-id"
ORG_ID_SYSTEM = "https://fhir.careloop-health.example/sid/organization"
LOC_ID_SYSTEM = "https://fhir.careloop-health.example/sid/location"


def coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


def concept(*codings: dict, text: str | None = None) -> dict:
    out: dict = {"coding": list(codings)}
    if text:
        out["text"] = text
    return out


# --- Conditions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dx:
    """A diagnosis with its ICD-10-CM and SNOMED CT codes (a real feed sends both)."""

    key: str
    icd10: str
    icd10_display: str
    snomed: str
    snomed_display: str
    text: str  # the phrase a clinician writes in a note
    concept: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = concept(
            coding(ICD10CM, self.icd10, self.icd10_display),
            coding(SNOMED, self.snomed, self.snomed_display),
            text=self.icd10_display,
        )
        object.__setattr__(self, "concept", c)


def _dx(*args: str) -> Dx:
    return Dx(*args)


# Chronic conditions with their Charlson-style weight in the hidden risk model.
CHRONIC: dict[str, Dx] = {
    d.key: d
    for d in (
        _dx("chf", "I50.9", "Heart failure, unspecified", "84114007", "Heart failure (disorder)",
            "congestive heart failure"),
        _dx("copd", "J44.9", "Chronic obstructive pulmonary disease, unspecified", "13645005",
            "Chronic obstructive lung disease (disorder)", "COPD"),
        _dx("diabetes", "E11.9", "Type 2 diabetes mellitus without complications", "44054006",
            "Diabetes mellitus type 2 (disorder)", "type 2 diabetes"),
        _dx("ckd", "N18.9", "Chronic kidney disease, unspecified", "709044004",
            "Chronic kidney disease (disorder)", "chronic kidney disease"),
        _dx("cancer", "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung",
            "363358000", "Malignant tumor of lung (disorder)", "lung cancer"),
        _dx("metastatic", "C79.9", "Secondary malignant neoplasm of unspecified site", "128462008",
            "Secondary malignant neoplastic disease (disorder)", "metastatic disease"),
        _dx("cirrhosis", "K74.60", "Unspecified cirrhosis of liver", "19943007",
            "Cirrhosis of liver (disorder)", "cirrhosis"),
        _dx("depression", "F32.A", "Depression, unspecified", "35489007",
            "Depressive disorder (disorder)", "depression"),
        _dx("dementia", "F03.90", "Unspecified dementia, unspecified severity, without behavioral "
            "disturbance, psychotic disturbance, mood disturbance, and anxiety", "52448006",
            "Dementia (disorder)", "dementia"),
        _dx("hypertension", "I10", "Essential (primary) hypertension", "38341003",
            "Hypertensive disorder, systemic arterial (disorder)", "hypertension"),
        _dx("afib", "I48.91", "Unspecified atrial fibrillation", "49436004", "Atrial fibrillation (disorder)",
            "atrial fibrillation"),
        _dx("cad", "I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris",
            "53741008", "Coronary arteriosclerosis (disorder)", "coronary artery disease"),
        _dx("pvd", "I73.9", "Peripheral vascular disease, unspecified", "400047006",
            "Peripheral vascular disease (disorder)", "peripheral vascular disease"),
        _dx("stroke_hx", "I69.30", "Unspecified sequelae of cerebral infarction", "440140008",
            "Sequela of cerebrovascular accident (disorder)", "prior stroke"),
        _dx("obesity", "E66.9", "Obesity, unspecified", "414916001", "Obesity (disorder)", "obesity"),
        _dx("alcohol", "F10.20", "Alcohol dependence, uncomplicated", "7200002", "Alcoholism (disorder)",
            "alcohol use disorder"),
        _dx("osteoarthritis", "M17.11", "Unilateral primary osteoarthritis, right knee", "239873007",
            "Osteoarthritis of knee (disorder)", "knee osteoarthritis"),
    )
}

# Charlson-like weights used by the hidden mechanism (not exposed to models except through codes).
CHRONIC_WEIGHT: dict[str, float] = {
    "chf": 2.0, "copd": 1.0, "diabetes": 1.0, "ckd": 2.0, "cancer": 2.0, "metastatic": 4.0,
    "cirrhosis": 3.0, "depression": 0.5, "dementia": 1.5, "hypertension": 0.2, "afib": 0.7,
    "cad": 1.0, "pvd": 1.0, "stroke_hx": 1.0, "obesity": 0.3, "alcohol": 1.0, "osteoarthritis": 0.0,
}

# After the drift date the hospital moves to more specific ICD-10-CM codes (a coding-practice change).
DRIFT_RECODE: dict[str, tuple[tuple[str, str], ...]] = {
    "chf": (("I50.22", "Chronic systolic (congestive) heart failure"),
            ("I50.32", "Chronic diastolic (congestive) heart failure")),
    "diabetes": (("E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
                 ("E11.22", "Type 2 diabetes mellitus with diabetic chronic kidney disease")),
}

# Acute principal diagnoses of inpatient stays.
ACUTE: dict[str, Dx] = {
    d.key: d
    for d in (
        _dx("hf_exac", "I50.23", "Acute on chronic systolic (congestive) heart failure", "42343007",
            "Congestive heart failure (disorder)", "acute decompensated heart failure"),
        _dx("copd_exac", "J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation",
            "195951007", "Acute exacerbation of chronic obstructive airways disease (disorder)",
            "COPD exacerbation"),
        _dx("pneumonia", "J18.9", "Pneumonia, unspecified organism", "233604007", "Pneumonia (disorder)",
            "community-acquired pneumonia"),
        _dx("sepsis", "A41.9", "Sepsis, unspecified organism", "91302008", "Sepsis (disorder)", "sepsis"),
        _dx("uti", "N39.0", "Urinary tract infection, site not specified", "68566005",
            "Urinary tract infectious disease (disorder)", "urinary tract infection"),
        _dx("aki", "N17.9", "Acute kidney failure, unspecified", "14669001", "Acute renal failure syndrome "
            "(disorder)", "acute kidney injury"),
        _dx("gi_bleed", "K92.2", "Gastrointestinal hemorrhage, unspecified", "74474003",
            "Gastrointestinal hemorrhage (disorder)", "gastrointestinal bleed"),
        _dx("cellulitis", "L03.90", "Cellulitis, unspecified", "128045006", "Cellulitis (disorder)",
            "cellulitis"),
        _dx("stroke", "I63.9", "Cerebral infarction, unspecified", "432504007", "Cerebral infarction "
            "(disorder)", "acute ischemic stroke"),
        _dx("nstemi", "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction", "401314000",
            "Acute non-ST segment elevation myocardial infarction (disorder)", "NSTEMI"),
        _dx("hip_fracture", "S72.001A", "Fracture of unspecified part of neck of right femur, initial "
            "encounter for closed fracture", "5913000", "Fracture of neck of femur (disorder)",
            "hip fracture"),
        _dx("dka", "E11.10", "Type 2 diabetes mellitus with ketoacidosis without coma", "420422005",
            "Ketoacidosis due to diabetes mellitus (disorder)", "diabetic ketoacidosis"),
        _dx("hepatic_enc", "K76.82", "Hepatic encephalopathy", "13920009", "Hepatic encephalopathy (disorder)",
            "hepatic encephalopathy"),
        _dx("syncope", "R55", "Syncope and collapse", "271594007", "Syncope (disorder)", "syncope"),
        _dx("chest_pain", "R07.9", "Chest pain, unspecified", "29857009", "Chest pain (finding)",
            "chest pain"),
        _dx("afib_rvr", "I48.91", "Unspecified atrial fibrillation", "49436004",
            "Atrial fibrillation (disorder)", "atrial fibrillation with rapid ventricular response"),
        # planned (elective) admissions
        _dx("elective_knee", "M17.11", "Unilateral primary osteoarthritis, right knee", "239873007",
            "Osteoarthritis of knee (disorder)", "elective right total knee arthroplasty"),
        _dx("chemo", "Z51.11", "Encounter for antineoplastic chemotherapy", "367336001",
            "Chemotherapy (procedure)", "scheduled chemotherapy"),
        _dx("elective_cabg", "I25.10", "Atherosclerotic heart disease of native coronary artery without "
            "angina pectoris", "53741008", "Coronary arteriosclerosis (disorder)", "elective coronary bypass"),
    )
}
ELECTIVE = ("elective_knee", "chemo", "elective_cabg")

# Secondary diagnoses coded when the labs show them.
SECONDARY: dict[str, Dx] = {
    d.key: d
    for d in (
        _dx("hyponatremia", "E87.1", "Hypo-osmolality and hyponatremia", "89627008", "Hyponatremia (disorder)",
            "hyponatremia"),
        _dx("anemia", "D64.9", "Anemia, unspecified", "271737000", "Anemia (disorder)", "anemia"),
        _dx("hypokalemia", "E87.6", "Hypokalemia", "43339004", "Hypokalemia (disorder)", "hypokalemia"),
        _dx("malnutrition", "E44.0", "Moderate protein-calorie malnutrition", "238107002",
            "Moderate protein-calorie malnutrition (disorder)", "moderate malnutrition"),
    )
}

# Reasons for a treat-and-release ED visit and for clinic visits.
ED_REASONS: tuple[Dx, ...] = (
    _dx("ed_back", "M54.50", "Low back pain, unspecified", "279039007", "Low back pain (finding)",
        "low back pain"),
    _dx("ed_fall", "W19.XXXA", "Unspecified fall, initial encounter", "1912002", "Fall (event)", "fall"),
    _dx("ed_chest", "R07.9", "Chest pain, unspecified", "29857009", "Chest pain (finding)", "chest pain"),
    _dx("ed_sob", "R06.02", "Shortness of breath", "267036007", "Dyspnea (finding)", "shortness of breath"),
    _dx("ed_abd", "R10.9", "Unspecified abdominal pain", "21522001", "Abdominal pain (finding)",
        "abdominal pain"),
    _dx("ed_uri", "J06.9", "Acute upper respiratory infection, unspecified", "54150009",
        "Upper respiratory infection (disorder)", "upper respiratory infection"),
)

# Family-history and negated phrases for notes: mentioned, never true of the patient.
FAMILY_HISTORY = ("colon cancer", "breast cancer", "coronary artery disease", "type 2 diabetes",
                  "Alzheimer disease", "stroke", "heart failure")


# --- Observations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """A lab or vital sign: LOINC code, canonical UCUM unit and adult reference range."""

    key: str
    loinc: str
    display: str
    unit: str
    low: float | None
    high: float | None
    decimals: int
    category: str = "laboratory"


LABS: dict[str, Lab] = {
    x.key: x
    for x in (
        Lab("sodium", "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0),
        Lab("potassium", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
        Lab("creatinine", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
        Lab("bun", "3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 0),
        Lab("glucose", "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
        Lab("hemoglobin", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
        Lab("wbc", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1),
        Lab("platelets", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
        Lab("albumin", "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0, 1),
        Lab("bicarbonate", "1963-8", "Bicarbonate [Moles/volume] in Serum or Plasma", "mmol/L", 22, 29, 0),
        Lab("hba1c", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1),
        Lab("bnp", "42637-9", "Natriuretic peptide B [Mass/volume] in Blood", "pg/mL", None, 100, 0),
    )
}

VITALS: dict[str, Lab] = {
    x.key: x
    for x in (
        Lab("heart_rate", "8867-4", "Heart rate", "/min", 60, 100, 0, "vital-signs"),
        Lab("resp_rate", "9279-1", "Respiratory rate", "/min", 12, 20, 0, "vital-signs"),
        Lab("spo2", "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 95, 100, 0,
            "vital-signs"),
        Lab("temperature", "8310-5", "Body temperature", "Cel", 36.1, 37.8, 1, "vital-signs"),
        Lab("weight", "29463-7", "Body weight", "kg", None, None, 1, "vital-signs"),
        Lab("height", "8302-2", "Body height", "cm", None, None, 0, "vital-signs"),
        Lab("bmi", "39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18.5, 25, 1, "vital-signs"),
    )
}
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
BP_SYSTOLIC = ("8480-6", "Systolic blood pressure")
BP_DIASTOLIC = ("8462-4", "Diastolic blood pressure")

# A site whose feed reports some values in other (convertible) units, under the same LOINC code,
# as real interfaces do. factor: value_in_site_unit = canonical * factor (+ offset).
SI_UNITS: dict[str, tuple[str, float, int]] = {
    "creatinine": ("umol/L", 88.42, 0),
    "glucose": ("mmol/L", 1 / 18.016, 1),
    "hemoglobin": ("g/L", 10.0, 0),
    "albumin": ("g/L", 10.0, 0),
}
IMPERIAL_UNITS: dict[str, tuple[str, float, int]] = {
    "weight": ("[lb_av]", 2.20462, 1),
    # temperature is affine: handled in the builder
}

SMOKING_LOINC = ("72166-2", "Tobacco smoking status")
SMOKING_VALUES = {
    "current": ("449868002", "Smokes tobacco daily (finding)"),
    "former": ("8517006", "Ex-smoker (finding)"),
    "never": ("266919005", "Never smoked tobacco (finding)"),
}
HOUSING_LOINC = ("71802-3", "Housing status")
HOUSING_VALUES = {
    False: ("LA31993-1", "I have housing"),
    True: ("LA30190-5", "I do not have housing (staying with others, in a hotel, in a shelter, living "
           "outside on the street, on a beach, in a car, or in a park)"),
}
HOUSEHOLD_LOINC = ("63512-8", "How many people are living or staying at this address?")


# --- Medications and procedures --------------------------------------------------------------------

MED = tuple[str, str]  # (RxCUI, display)

CHRONIC_MEDS: dict[str, tuple[MED, ...]] = {
    "chf": (("310429", "furosemide 20 MG Oral Tablet"), ("314076", "lisinopril 10 MG Oral Tablet"),
            ("866427", "metoprolol succinate 25 MG Extended Release Oral Tablet")),
    "copd": (("896209", "fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder "
              "Inhaler"), ("245314", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler")),
    "diabetes": (("861007", "metformin hydrochloride 500 MG Oral Tablet"),
                 ("274783", "insulin glargine 100 UNT/ML Injectable Solution")),
    "ckd": (("197319", "allopurinol 100 MG Oral Tablet"),),
    "hypertension": (("197361", "amlodipine 5 MG Oral Tablet"), ("316049", "hydrochlorothiazide 25 MG")),
    "afib": (("1364445", "apixaban 5 MG Oral Tablet"), ("197604", "digoxin 0.125 MG Oral Tablet")),
    "cad": (("617312", "atorvastatin 40 MG Oral Tablet"), ("243670", "aspirin 81 MG Oral Tablet")),
    "depression": (("312938", "sertraline 50 MG Oral Tablet"),),
    "dementia": (("997223", "donepezil hydrochloride 10 MG Oral Tablet"),),
    "cirrhosis": (("313002", "spironolactone 25 MG Oral Tablet"), ("197622", "lactulose 10 GM/15 ML Oral "
                  "Solution")),
    "stroke_hx": (("309362", "clopidogrel 75 MG Oral Tablet"),),
    "pvd": (("309362", "clopidogrel 75 MG Oral Tablet"),),
}

ACUTE_MEDS: dict[str, tuple[MED, ...]] = {
    "hf_exac": (("727316", "furosemide 10 MG/ML Injectable Solution"),),
    "copd_exac": (("312617", "prednisone 20 MG Oral Tablet"), ("308182", "azithromycin 250 MG Oral Tablet")),
    "pneumonia": (("1665021", "ceftriaxone 1000 MG Injection"), ("308182", "azithromycin 250 MG Oral Tablet")),
    "sepsis": (("1659149", "piperacillin 4000 MG / tazobactam 500 MG Injection"),
               ("1807513", "vancomycin 1000 MG Injection")),
    "uti": (("1665021", "ceftriaxone 1000 MG Injection"),),
    "cellulitis": (("197454", "cephalexin 500 MG Oral Capsule"),),
    "gi_bleed": (("314200", "pantoprazole 40 MG Delayed Release Oral Tablet"),),
    "nstemi": (("1361029", "heparin sodium 5000 UNT/ML Injectable Solution"),),
    "dka": (("311034", "insulin regular human 100 UNT/ML Injectable Solution"),),
    "hepatic_enc": (("197622", "lactulose 10 GM/15 ML Oral Solution"),),
    "chemo": (("1736854", "cisplatin 50 MG Injection"),),
    "afib_rvr": (("866514", "metoprolol tartrate 25 MG Oral Tablet"),),
}
VTE_PROPHYLAXIS: MED = ("854235", "enoxaparin sodium 40 MG in 0.4 ML Prefilled Syringe")

PROCEDURES: dict[str, tuple[tuple[str, str], ...]] = {
    "hf_exac": (("40701008", "Echocardiography (procedure)"),),
    "copd_exac": (("399208008", "Plain X-ray of chest (procedure)"),),
    "pneumonia": (("399208008", "Plain X-ray of chest (procedure)"),),
    "sepsis": (("30088009", "Blood culture (procedure)"), ("392230005", "Insertion of central venous "
               "catheter (procedure)")),
    "gi_bleed": (("1919006", "Esophagogastroduodenoscopy (procedure)"),),
    "stroke": (("303653007", "Computed tomography of head (procedure)"),),
    "nstemi": (("41339005", "Coronary angioplasty (procedure)"),),
    "aki": (("302497006", "Hemodialysis (procedure)"),),
    "hip_fracture": (("179344006", "Primary open reduction of fracture of neck of femur and internal "
                      "fixation (procedure)"),),
    "elective_knee": (("609588000", "Total knee replacement (procedure)"),),
    "chemo": (("367336001", "Chemotherapy (procedure)"),),
    "elective_cabg": (("232717009", "Coronary artery bypass grafting (procedure)"),),
}


# --- Encounter codes -------------------------------------------------------------------------------

ENC_CLASS = {
    "IMP": coding(ACT_CODE, "IMP", "inpatient encounter"),
    "EMER": coding(ACT_CODE, "EMER", "emergency"),
    "AMB": coding(ACT_CODE, "AMB", "ambulatory"),
}
ENC_TYPE = {
    "IMP": concept(coding(SNOMED, "183452005", "Emergency hospital admission (procedure)")),
    "IMP_EL": concept(coding(SNOMED, "183460006", "Elective hospital admission (procedure)")),
    "EMER": concept(coding(SNOMED, "50849002", "Emergency room admission (procedure)")),
    "AMB": concept(coding(SNOMED, "185349003", "Encounter for check up (procedure)")),
    "AMB_FU": concept(coding(SNOMED, "390906007", "Follow-up encounter (procedure)")),
}
PRIORITY = {
    "EM": concept(coding(ACT_PRIORITY, "EM", "emergency")),
    "EL": concept(coding(ACT_PRIORITY, "EL", "elective")),
    "UR": concept(coding(ACT_PRIORITY, "UR", "urgent")),
}
ADMIT_SOURCES = {
    "emd": concept(coding(ADMIT_SOURCE, "emd", "From accident/emergency department")),
    "mp": concept(coding(ADMIT_SOURCE, "mp", "Medical Practitioner/physician referral")),
    "hosp-trans": concept(coding(ADMIT_SOURCE, "hosp-trans", "Transferred from other hospital")),
    "nursing": concept(coding(ADMIT_SOURCE, "nursing", "From nursing home")),
}

# Discharge dispositions: HL7 code plus the NUBC UB-04 patient status code US claims carry.
DISPOSITIONS: dict[str, dict] = {
    "home": concept(coding(DISCHARGE_DISPOSITION, "home", "Home"),
                    coding(NUBC_DISCHARGE, "01", "Discharged to home or self care")),
    "home_health": concept(coding(DISCHARGE_DISPOSITION, "home", "Home"),
                           coding(NUBC_DISCHARGE, "06", "Discharged/transferred to home under care of "
                                  "organized home health service organization"), text="Home with home health"),
    "snf": concept(coding(DISCHARGE_DISPOSITION, "snf", "Skilled nursing facility"),
                   coding(NUBC_DISCHARGE, "03", "Discharged/transferred to skilled nursing facility (SNF)")),
    "ama": concept(coding(DISCHARGE_DISPOSITION, "aadvice", "Left against advice"),
                   coding(NUBC_DISCHARGE, "07", "Left against medical advice or discontinued care")),
    "hospice": concept(coding(DISCHARGE_DISPOSITION, "hosp", "Hospice"),
                       coding(NUBC_DISCHARGE, "50", "Discharged/transferred to hospice - home")),
    "transfer": concept(coding(DISCHARGE_DISPOSITION, "other-hcf", "Other healthcare facility"),
                        coding(NUBC_DISCHARGE, "02", "Discharged/transferred to a short-term general "
                               "hospital for inpatient care"), text="Transfer to another acute care hospital"),
    "rehab": concept(coding(DISCHARGE_DISPOSITION, "rehab", "Rehabilitation"),
                     coding(NUBC_DISCHARGE, "62", "Discharged/transferred to an inpatient rehabilitation "
                            "facility")),
    "expired": concept(coding(DISCHARGE_DISPOSITION, "exp", "Expired"),
                       coding(NUBC_DISCHARGE, "20", "Expired")),
}

# --- Demographics -------------------------------------------------------------------------------

RACES = {
    "white": ("2106-3", "White"),
    "black": ("2054-5", "Black or African American"),
    "asian": ("2028-9", "Asian"),
    "aian": ("1002-5", "American Indian or Alaska Native"),
    "nhpi": ("2076-8", "Native Hawaiian or Other Pacific Islander"),
    "other": ("2131-1", "Other Race"),
}
ETHNICITIES = {
    "hispanic": ("2135-2", "Hispanic or Latino"),
    "not_hispanic": ("2186-5", "Not Hispanic or Latino"),
}
LANGUAGES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "zh": "Chinese", "vi": "Vietnamese",
    "ht": "Haitian Creole", "ru": "Russian",
}
MARITAL_STATUS = {
    "M": "Married", "S": "Never Married", "D": "Divorced", "W": "Widowed",
}
PAYERS = {
    "medicare": ("1", "MEDICARE", "Medicare"),
    "medicaid": ("2", "MEDICAID", "MassHealth (Medicaid)"),
    "commercial": ("5", "PRIVATE HEALTH INSURANCE", "Blue Harbor Health Plan"),
    "self_pay": ("81", "Self-pay", "Self-pay"),
}

FIRST_NAMES = {
    "female": ("Mary", "Patricia", "Linda", "Barbara", "Elizabeth", "Jennifer", "Maria", "Susan", "Margaret",
               "Dorothy", "Lisa", "Nancy", "Karen", "Betty", "Helen", "Sandra", "Donna", "Carol", "Ruth",
               "Sharon", "Michelle", "Laura", "Sarah", "Kimberly", "Deborah", "Jessica", "Shirley", "Cynthia",
               "Angela", "Melissa", "Brenda", "Amy", "Anna", "Rebecca", "Virginia", "Kathleen", "Pamela",
               "Martha", "Debra", "Amanda", "Stephanie", "Carolyn", "Christine", "Marie", "Janet", "Catherine",
               "Frances", "Ann", "Joyce", "Diane", "Alice", "Julie", "Heather", "Teresa", "Doris", "Gloria",
               "Evelyn", "Jean", "Cheryl", "Mildred", "Katherine", "Joan", "Ashley", "Judith", "Rose", "Janice",
               "Kelly", "Nicole", "Judy", "Christina", "Kathy", "Theresa", "Beverly", "Denise", "Tammy",
               "Irene", "Jane", "Lori", "Rachel", "Marilyn", "Andrea", "Kathryn", "Louise", "Sara", "Anne",
               "Jacqueline", "Wanda", "Bonnie", "Julia", "Ruby", "Lois", "Tina", "Phyllis", "Norma", "Paula",
               "Diana", "Annie", "Lillian", "Emily", "Robin", "Guadalupe", "Rosa", "Ana", "Lucia", "Mei",
               "Thi", "Nadia", "Fatima", "Aaliyah", "Keisha", "Latoya", "Imani", "Yolanda", "Mariana"),
    "male": ("James", "John", "Robert", "Michael", "William", "David", "Richard", "Charles", "Joseph",
             "Thomas", "Christopher", "Daniel", "Paul", "Mark", "Donald", "George", "Kenneth", "Steven",
             "Edward", "Brian", "Ronald", "Anthony", "Kevin", "Jason", "Matthew", "Gary", "Timothy", "Jose",
             "Larry", "Jeffrey", "Frank", "Scott", "Eric", "Stephen", "Andrew", "Raymond", "Gregory",
             "Joshua", "Jerry", "Dennis", "Walter", "Patrick", "Peter", "Harold", "Douglas", "Henry", "Carl",
             "Arthur", "Ryan", "Roger", "Joe", "Juan", "Jack", "Albert", "Jonathan", "Justin", "Terry",
             "Gerald", "Keith", "Samuel", "Willie", "Ralph", "Lawrence", "Nicholas", "Roy", "Benjamin",
             "Bruce", "Brandon", "Adam", "Harry", "Fred", "Wayne", "Billy", "Steve", "Louis", "Jeremy",
             "Aaron", "Randy", "Howard", "Eugene", "Carlos", "Russell", "Bobby", "Victor", "Martin",
             "Ernest", "Phillip", "Todd", "Jesse", "Craig", "Alan", "Shawn", "Clarence", "Sean", "Philip",
             "Chris", "Johnny", "Earl", "Jimmy", "Antonio", "Luis", "Miguel", "Wei", "Minh", "Dmitri",
             "Jamal", "Darnell", "Tyrone", "Malik", "Rafael", "Jean-Pierre"),
}
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
    "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez",
    "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart",
    "Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson",
    "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson", "Brooks",
    "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez", "Castillo",
    "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez", "O'Brien", "Sullivan", "McCarthy",
    "Fitzgerald", "Tran", "Pham", "Chen", "Wang", "Li", "Zhang", "Santos", "Pereira", "Silva", "Ivanov",
    "Kowalski", "Jean-Baptiste", "Pierre", "Dubois", "Murray", "Doyle", "Lynch", "Brennan", "Quinn",
)
STREETS = ("Maple St", "Oak Ave", "Elm St", "Washington St", "Main St", "Pleasant St", "Highland Ave",
           "Union St", "School St", "Prospect St", "Summer St", "Chestnut St", "Water St", "Park Ave",
           "Central St", "Spring St", "Walnut St", "Cedar St", "Church St", "Mill St", "River Rd",
           "Lincoln St", "Franklin St", "Winter St", "Beacon St", "Bay State Rd", "Lowell St", "Essex St")
