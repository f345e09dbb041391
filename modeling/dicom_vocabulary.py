"""Which values read from a DICOM file may be shown: the one place that decides.

A tag's value is whatever the file's maker wrote, and a misused or damaged tag can hold anything: a
patient's name typed into the wrong field (`OT^DOE^JANE` in Modality), or the bytes of the tags after
it. A pattern such as "upper-case letters, digits and spaces" admits `DOE JANE 1961`, so no value
reaches a message, CSV, log, report or the demo unless it passes its tag's rule here:

- Modality, PhotometricInterpretation, BodyPartExamined: DICOM's defined terms (PS3.3 C.7.3.1.1.1
  with the retired ones, C.7.6.3.1.2, PS3.16 Annex L), exact and upper-case as DICOM writes them.
- Manufacturer: a list of CT makers as they name themselves, matched ignoring case and spacing and
  shown as listed (so the file's own text is never echoed).
- ConvolutionKernel: free text per maker, shown only when every value is a named kernel (GE's
  STANDARD, ..., Philips' A-E, L, YA-YF) or has the shape of a numbered one: Siemens `B30f` / `Br40d`
  (an upper-case letter, an optional lower-case one, two digits, an optional lower-case letter),
  Canon/Toshiba `FC13` / `FL04`, or one digit (a Siemens iterative strength, `I30f\\3`). At most an
  initial and two digits fit those shapes, never a name.
- ManufacturerModelName, SeriesDescription, ImageType and all other free text: never shown. Model
  names ("Revolution CT", "SOMATOM Force") have no defined terms, and a shape loose enough for them
  admits "Jane Doe". (ImageType is read, for LOCALIZER, but never echoed.)
- Numbers (Rows, Columns, BitsStored: integers; PixelSpacing, SliceThickness, KVP, RescaleSlope,
  RescaleIntercept: reals): shown only as finite numbers; a text value is not shown at all.
- TransferSyntaxUID: shown as "name (UID)" only for a transfer syntax pydicom knows; an unknown UID's
  pydicom name is the UID string itself, and a damaged one can be any text.

A text value that fails its rule is shown as `UNLISTED`; anything else that fails is not shown.
Only the standard library and pydicom (optional) are imported: this module is uploaded as remote code.
"""

import math
import re
from decimal import Decimal
from typing import Optional

try:  # optional, as in ct_dicom: without it no transfer syntax is named
    from pydicom.uid import UID_dictionary
except ImportError:  # pragma: no cover - exercised only where pydicom is missing
    UID_dictionary = {}

UNLISTED = "an unlisted value"

MODALITIES = frozenset("""
    AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL
    IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT
    PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR
    SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())  # the second line: retired terms, still met in old archives
PHOTOMETRIC_INTERPRETATIONS = frozenset([
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420",
    "YBR_ICT", "YBR_RCT", "XYB", "HSV", "ARGB", "CMYK", "YBR_PARTIAL_422",  # the last four retired
])
BODY_PARTS = frozenset("""
    ABDOMEN ABDOMENPELVIS ADRENAL ANKLE AORTA ARM AXILLA BACK BLADDER BRAIN BREAST BRONCHUS BUTTOCK
    CALCANEUS CALF CAROTID CEREBELLUM CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS
    CLAVICLE COCCYX COLON CORNEA CORONARYARTERY CSPINE CTSPINE DUODENUM EAR ELBOW ESOPHAGUS EXTREMITY
    EYE EYELID FACE FEMUR FINGER FOOT GALLBLADDER HAND HEAD HEADNECK HEART HIP HUMERUS IAC ILEUM ILIUM
    JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM MOUTH NECK
    NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS PENIS
    PHARYNX PROSTATE RADIUS RADIUSULNA RECTUM RIB SCALP SCAPULA SCLERA SCROTUM SHOULDER SKULL SPINE
    SPLEEN SSPINE STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THUMB THYMUS THYROID TIBIA TIBIAFIBULA
    TLSPINE TMJ TOE TONGUE TRACHEA TSPINE ULNA URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA
""".split())
CT_MAKERS = (
    "SIEMENS", "Siemens Healthineers", "Siemens Healthcare", "Siemens Healthcare GmbH",
    "GE MEDICAL SYSTEMS", "GE Healthcare", "GE", "Philips", "Philips Medical Systems", "Philips Healthcare",
    "TOSHIBA", "Toshiba Medical Systems", "Canon Medical Systems", "CANON_MEC", "Hitachi",
    "Hitachi Medical Corporation", "Hitachi Healthcare", "FUJIFILM Corporation", "FUJIFILM Healthcare",
    "United Imaging Healthcare", "UIH", "Neusoft Medical Systems", "NeuroLogica", "Samsung", "Shimadzu",
    "Minfound Medical Systems", "Imatron", "Elscint", "Picker International", "Marconi Medical Systems",
    "Xoran Technologies", "Planmed", "Carestream Health",
    "SYNTHETIC PHANTOM",  # this project's own synthetic slices (training/dicom_writer.py)
)
NAMED_KERNELS = frozenset("""
    STANDARD SOFT LUNG BONE BONEPLUS DETAIL CHEST EDGE ULTRA
    A B C D E L YA YB YC YD YE YF
""".split())  # GE's, then Philips'
_NUMBERED_KERNEL = re.compile(r"[A-Z][a-z]?[0-9]{2}[a-z]?|F[CL][0-9]{2}|[0-9]")

_VOCABULARIES = {
    "Modality": MODALITIES,
    "PhotometricInterpretation": PHOTOMETRIC_INTERPRETATIONS,
    "BodyPartExamined": BODY_PARTS,
}
INTEGER_TAGS = ("Rows", "Columns", "BitsStored")
REAL_TAGS = ("PixelSpacing", "SliceThickness", "KVP", "RescaleSlope", "RescaleIntercept")
TEXT_TAGS = (*_VOCABULARIES, "Manufacturer", "ConvolutionKernel")


def _folded(text: str) -> str:
    return " ".join(text.upper().split())


_MAKERS_BY_FOLDED = {_folded(maker): maker for maker in CT_MAKERS}


def _text_item(keyword: str, item) -> Optional[str]:
    """One text value of tag `keyword` as it may be shown, or None."""
    text = str(item)
    if keyword == "Manufacturer":
        return _MAKERS_BY_FOLDED.get(_folded(text))
    if keyword == "ConvolutionKernel":
        return text if text in NAMED_KERNELS or _NUMBERED_KERNEL.fullmatch(text) else None
    return text if text in _VOCABULARIES[keyword] else None


def _number_item(keyword: str, item):
    """One numeric value as a plain int or float, or None for anything that is not a finite number."""
    # pydicom gives IS as int, DS as float (or Decimal, with config.use_DS_decimal); text is never a number
    if isinstance(item, bool) or not isinstance(item, (int, float, Decimal)) or not math.isfinite(item):
        return None
    if keyword in INTEGER_TAGS:
        return int(item) if isinstance(item, int) else None
    return float(item)


def _transfer_syntax(uid) -> str:
    entry = UID_dictionary.get(str(uid))
    return f"{entry[0]} ({uid})" if entry and entry[1] == "Transfer Syntax" else UNLISTED


def _is_multi(value) -> bool:
    """pydicom gives a multi-valued tag as a MultiValue (a list); a str is one value."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def shown_value(keyword: str, value):
    """`value` of tag `keyword` as it may be shown: a str, a number, or a list of them for a multi-valued
    tag; `UNLISTED` for a text value that fails its tag's rule; None for what is never shown (a number
    that is not one, free text without a rule, a tag this module does not know)."""
    if keyword == "TransferSyntaxUID":
        return _transfer_syntax(value)
    if keyword not in TEXT_TAGS + INTEGER_TAGS + REAL_TAGS:
        return None
    multi = _is_multi(value)
    items = list(value) if multi else [value]
    vet = _text_item if keyword in TEXT_TAGS else _number_item
    shown = [vet(keyword, item) for item in items]
    if not items or None in shown:
        return UNLISTED if keyword in TEXT_TAGS else None
    return shown if multi else shown[0]


def shown_text(keyword: str, value) -> str:
    """`shown_value` for a one-line message: multiple values joined by a backslash, as DICOM writes them."""
    shown = shown_value(keyword, value)
    if shown is None:
        return UNLISTED
    return "\\".join(map(str, shown)) if isinstance(shown, list) else str(shown)
