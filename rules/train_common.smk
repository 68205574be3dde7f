# Training stage helpers (included by rules/train.smk): per-method settings and input functions.

TRAIN = config["train"]
OFFLINE = TRAIN.get("offline_teacher", {}).get("enabled", False)
PILOT = TRAIN["pilot"]

# settings that must be equal across methods for a matched comparison
SHARED_KEYS = ("steps", "batch_size", "grad_accum", "max_length", "snapshot_every", "save_state_every")


def train_settings(method, seed=None):
    """kept.train.TrainConfig fields of one method: common + per-method overrides + the shared budget, with the
    student's seed (data order and any randomness of the run; default the primary seed)."""
    settings = dict(TRAIN["common"])
    overrides = TRAIN["per_method"].get(method) or {}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings.update({key: TRAIN[key] for key in SHARED_KEYS})
    settings["betas"] = list(settings["betas"])
    settings["seed"] = SEEDS[0] if seed is None else seed
    return settings


def student_settings(wildcards):
    """train_settings of the trained student named by {method} (kept.grid: method, init, corpus, seed)."""
    method, _, _, seed = trained_spec(wildcards.method)
    return train_settings(method, seed)


def accelerate_profile():
    """Name of the accelerate config under profiles/accelerate/ (None unless launcher is accelerate)."""
    return TRAIN["accelerate_profile"] if TRAIN["launcher"] == "accelerate" else None


def train_input(wildcards):
    """The init, the corpus (an ablation's own, or the transfer corpus) and the teacher (or its cache) of the
    trained student named by {method}."""
    method, init, corpus, _ = trained_spec(wildcards.method)
    inputs = {"student": R(wildcards.variant, f"init-{init}", "model"), "corpus": corpus_dir(corpus)}
    if method == "xkd_z" and OFFLINE and corpus is None:
        inputs["teacher_cache"] = R(wildcards.variant, "teacher_cache")
    elif method != "ut":
        inputs["teacher"] = teacher_dir(wildcards.variant)
    return inputs
