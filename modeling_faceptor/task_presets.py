"""Task specifications of the official Faceptor configurations (paper Table 2).

Label orders follow the official data loaders, because a query's index is what carries its meaning:
the official code remaps every expression dataset to AffectNet's order (neutral first), which differs
from the order the paper lists the expressions in.
"""

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip  # a table of names: packed rows read better

# AffectNet's class order, which the official RAF-DB and FERPlus loaders remap to.
EXPRESSIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")

# CelebAMask-HQ in the official evaluator's order (its short names: background, neck, face, cloth, rr, lr,
# rb, lb, re, le, nose, imouth, llip, ulip, hair, glass, hat, earr, neckl).
CELEBAMASK_HQ_CLASSES = (
    "background", "neck", "skin", "cloth", "right_ear", "left_ear", "right_brow", "left_brow", "right_eye",
    "left_eye", "nose", "inner_mouth", "lower_lip", "upper_lip", "hair", "eyeglasses", "hat", "earring",
    "necklace",
)  # fmt: skip  # a table of names: packed rows read better

# LaPa in the official evaluator's order (background, face_lr_rr, lb, rb, le, re, nose, ul, im, ll, hair).
LAPA_CLASSES = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose", "upper_lip",
    "inner_mouth", "lower_lip", "hair",
)  # fmt: skip  # a table of names: packed rows read better

NUM_AGES = 101  # one query per age 0..100


def _identity(name: str) -> dict:
    return {"name": name, "kind": "embedding"}


def _age(name: str) -> dict:
    return {"name": name, "kind": "age", "num_queries": NUM_AGES}


def _expression(name: str) -> dict:
    return {"name": name, "kind": "classification", "labels": list(EXPRESSIONS)}


def _landmarks(name: str, num_points: int) -> dict:
    return {"name": name, "kind": "landmarks", "num_queries": num_points}


BASE_TASKS = (
    _identity("recog_ms1mv3"),
    _age("age_morph2"),
    {"name": "biattr_celeba", "kind": "multilabel", "labels": list(CELEBA_ATTRIBUTES)},
    _expression("affect_affectnet"),
    _expression("affect_rafdb"),
    {"name": "parsing_celebam", "kind": "parsing", "labels": list(CELEBAMASK_HQ_CLASSES)},
    _landmarks("align_300w", 68),
)

FULL_TASKS = (
    _identity("recog_ms1mv3"),
    _age("age_morph2"),
    _age("age_utkface"),
    {"name": "biattr_celeba", "kind": "multilabel", "labels": list(CELEBA_ATTRIBUTES)},
    _expression("affect_affectnet"),
    _expression("affect_rafdb"),
    _expression("affect_ferplus"),
    {"name": "parsing_celebam", "kind": "parsing", "labels": list(CELEBAMASK_HQ_CLASSES)},
    {"name": "parsing_lapa", "kind": "parsing", "labels": list(LAPA_CLASSES)},
    _landmarks("align_300w", 68),
    _landmarks("align_cofw", 29),
    _landmarks("align_wflw", 98),
    _landmarks("align_aflw", 19),
)

# Every official task by name, so converted checkpoints get their label names back.
OFFICIAL_TASKS = {spec["name"]: spec for spec in FULL_TASKS}

PRESETS = {
    "faceptor-base": {"tasks": BASE_TASKS},
    "faceptor-full": {"tasks": FULL_TASKS},
}
