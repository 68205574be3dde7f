# Training stage helpers (included by rules/train.smk): per-method settings and input functions.

TRAIN = config["train"]
OFFLINE = TRAIN.get("offline_teacher", {}).get("enabled", False)
PILOT = TRAIN["pilot"]

# settings that must be equal across methods for a matched comparison
SHARED_KEYS = ("steps", "batch_size", "grad_accum", "max_length", "snapshot_every", "save_state_every")


def train_settings(method):
    """kept.train.TrainConfig fields of one method: common + per-method overrides + the shared budget."""
    settings = dict(TRAIN["common"])
    overrides = TRAIN["per_method"].get(method) or {}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings.update({key: TRAIN[key] for key in SHARED_KEYS})
    settings["betas"] = list(settings["betas"])
    settings["seed"] = config["seed"]
    return settings


def accelerate_profile():
    """Name of the accelerate config under profiles/accelerate/ (None unless launcher is accelerate)."""
    return TRAIN["accelerate_profile"] if TRAIN["launcher"] == "accelerate" else None


def train_input(wildcards):
    inputs = {"student": R(wildcards.variant, f"init-{TRAIN_INIT}", "model"), "corpus": R("corpus")}
    if wildcards.method == "xkd_z" and OFFLINE:
        inputs["teacher_cache"] = R(wildcards.variant, "teacher_cache")
    elif wildcards.method != "ut":
        inputs["teacher"] = teacher_dir(wildcards.variant)
    return inputs
