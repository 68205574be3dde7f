# Training stage helpers (included by rules/train.smk): per-method settings and input functions.

TRAIN = config["train"]
OFFLINE = TRAIN.get("offline_teacher", {}).get("enabled", False)
PILOT = TRAIN["pilot"]
NUM_NODES = TRAIN.get("num_nodes", 1)

# the pilot reads the teacher's LayerNorm gammas under Orion's parameter names (kept.train.pilot)
for _v in PILOT.get("variants", []):
    if _v in VARIANTS and variant_family(_v) not in ("orion", None):
        raise ValueError(f"train.pilot.variants: {_v!r} is a {variant_family(_v)!r} variant; the pilot reads Orion "
                         "LayerNorm gammas and runs on Orion variants only")


# A training across nodes (SLURM) also asks for that many nodes with one task each, and is marked `mpi` so the
# SLURM jobstep runs the script in the batch shell (not inside `srun -n1`), where the launcher's own srun starts one
# launcher per node (kept.train.launch); tasks_per_gpu 0 keeps the plugin from adding --ntasks-per-gpu. The train
# rule's gpu resource is GPUs per node x nodes.
TRAIN_NODE_RESOURCES = (
    {"nodes": NUM_NODES, "tasks": NUM_NODES, "tasks_per_gpu": 0, "mpi": "srun"} if NUM_NODES > 1 else {}
)


# the teacher cache and the pilot run in one process: at most one GPU
ONE_GPU = min(1, TRAIN["resources"]["gpu"])


def train_settings(method, seed=None, variant=None):
    """kept.train.TrainConfig fields of one method: common + per-method overrides (train.per_method, then the
    variant's own variants.<name>.train.per_method) + the shared budget, with the student's seed (data order and
    any randomness of the run; default the primary seed)."""
    from kept.train.config import method_settings

    variant_train = config["variants"][variant].get("train") if variant is not None else None
    return method_settings(TRAIN, method, seed=SEEDS[0] if seed is None else seed, variant_train=variant_train)


def pilot_settings():
    """kept.train.pilot.PilotConfig fields of the pilot (train.pilot + the shared run settings)."""
    from kept.train.config import pilot_settings as settings

    return settings(TRAIN, seed=config["seed"])


# train.fast keys that are TrainConfig fields: the stop-at-parity settings of the fast-path students
FAST_STOP_KEYS = ("stop_every", "stop_kl", "stop_kl_share", "stop_sequences")


def student_settings(wildcards):
    """train_settings of the trained student named by {method} (kept.grid: method, init, corpus, seed), plus the
    stop-at-parity settings of train.fast for a fast-path student (`-parity`); the regime control (ut@teacher)
    keeps the teacher's own format and writes no snapshots (it has no recovery curve)."""
    method, _, _, seed = trained_spec(wildcards.method)
    settings = train_settings(method, seed, wildcards.variant)
    if is_control(wildcards.method):
        settings.update(export_format="own", snapshot_every=0)
    if parse_trained(wildcards.method).stop:
        settings.update({key: FAST[key] for key in FAST_STOP_KEYS})
        if FAST.get("lr") is not None:
            settings["lr"] = FAST["lr"]
    return settings


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
    """The init, the corpus (an ablation's own, or the transfer corpus) and the teacher (or its cache) of the
    trained student named by {method}."""
    method, init, corpus, _ = trained_spec(wildcards.method)
    student = teacher_dir(wildcards.variant) if is_control(wildcards.method) else R(wildcards.variant, f"init-{init}", "model")
    inputs = {"student": student, "corpus": corpus_dir(corpus)}
    if method == "xkd_z" and OFFLINE and corpus is None:
        inputs["teacher_cache"] = R(wildcards.variant, "teacher_cache")
    elif method != "ut":
        inputs["teacher"] = teacher_dir(wildcards.variant)
    return inputs
