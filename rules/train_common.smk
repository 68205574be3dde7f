# Training stage helpers (included by rules/train.smk): per-method settings and input functions.

TRAIN = config["train"]
OFFLINE = TRAIN.get("offline_teacher", {}).get("enabled", False)
PILOT = TRAIN["pilot"]


def train_settings(method):
    """kept.train.TrainConfig fields of one method: common + per-method overrides + the shared budget."""
    from kept.train.config import method_settings

    return method_settings(TRAIN, method, seed=config["seed"])


def pilot_settings():
    """kept.train.pilot.PilotConfig fields of the pilot (train.pilot + the shared run settings)."""
    from kept.train.config import pilot_settings as settings

    return settings(TRAIN, seed=config["seed"])


def accelerate_profile():
    """Name of the accelerate config under profiles/accelerate/ (None unless launcher is accelerate)."""
    return TRAIN["accelerate_profile"] if TRAIN["launcher"] == "accelerate" else None


# The conda env of the train rule: DeepSpeed (GPU-only, requirements-gpu.txt) only when a deepspeed_* profile runs.
TRAIN_ENV = (
    "../envs/torch-gpu.yaml"
    if TRAIN["launcher"] == "accelerate" and TRAIN["accelerate_profile"].startswith("deepspeed")
    else "../envs/torch.yaml"
)


def train_input(wildcards):
    inputs = {"student": R(wildcards.variant, f"init-{TRAIN_INIT}", "model"), "corpus": R("corpus")}
    if wildcards.method == "xkd_z" and OFFLINE:
        inputs["teacher_cache"] = R(wildcards.variant, "teacher_cache")
    elif wildcards.method != "ut":
        inputs["teacher"] = teacher_dir(wildcards.variant)
    return inputs
