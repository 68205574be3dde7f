# Report stage: the paper's tables and figures, built only from the result files of the configured grid
# (variants x models x evals, via the helpers in common.smk), never by hand. A missing input is a missing-input
# error of the DAG, never a blank cell. Everything is registered for `snakemake --report report.html`.


report: "../report/workflow.rst"


REPORT_CFG = config["report"]
REPORT_PAPER_TABLES = {"h6", "mtbench", "kommlu"}
REPORT_EXTS = {"table": ("csv", "md", "tex"), "figure": ("png", "pdf")}

# artifact -> (kind, name, [((variant, model, tag), path[, detail]), ...]) over the configured grid (eval_models,
# mtbench_formats, snapshot_steps in common.smk; recovery_variants in eval_harness.smk). Fidelity reads each
# untrained mapping's model directory. `detail` is the per-unit data behind a summary (lm-eval's raw directory with
# its per-sample logs, the MT-Bench judgments, the code probe's items) for the standard errors and paired tests
# (kept.report.units); an artifact gives it for every item or for none.
REPORT_ARTIFACTS = {
    "table_h6": (
        "table",
        "h6",
        [((v, m, ""), R(v, "eval", m, "h6.json"), R(v, "eval", m, "h6")) for v in VARIANTS for m in eval_models(v, "h6")],
    ),
    "table_mtbench": (
        "table",
        "mtbench",
        [
            ((v, m, f), R(v, "eval", m, f"mtbench-{f}.json"), R(v, "mtbench", "judgments", f"{m}-{f}.jsonl"))
            for v in VARIANTS
            for m in eval_models(v, "mtbench")
            for f in mtbench_formats(m)
        ],
    ),
    "table_kommlu": (
        "table",
        "kommlu",
        [
            ((v, m, ""), R(v, "eval", m, "kommlu.json"), R(v, "eval", m, "kommlu"))
            for v in VARIANTS
            for m in eval_models(v, "kommlu")
        ],
    ),
    "table_transfer_code": (
        "table",
        "transfer_code",
        [
            ((v, m, ""), R(v, "eval", m, "code.json"), R(v, "eval", m, "code.items.jsonl"))
            for v in VARIANTS
            for m in eval_models(v, "code")
        ],
    ),
    "table_transfer_longctx": (
        "table",
        "transfer_longctx",
        [((v, m, ""), R(v, "eval", m, "longctx.json")) for v in VARIANTS for m in eval_models(v, "longctx")],
    ),
    "table_fidelity": (
        "table",
        "fidelity",
        [((v, f"init-{n}", ""), model_dir(v, f"init-{n}")) for v in VARIANTS for n in variant_inits(v)],
    ),
    "figure_train_loss": (
        "figure",
        "train_loss",
        [((v, m, ""), R(v, m, "train_log.jsonl")) for v in VARIANTS for m in trained_names(v)],
    ),
    # Figure 2: the recovery subset of H6 on every snapshot of every trained student (primary seed), from its
    # untrained init (step 0, its h6 summary) towards the teacher (dashed line), where those are evaluated on h6.
    "figure_recovery": (
        "figure",
        "recovery",
        [entry for v in recovery_variants() for m in recovery_models(v) for entry in recovery_curve_items(v, m, "{step}")]
        + [
            ((v, m, ""), R(v, "eval", m, "h6.json"))
            for v in recovery_variants()
            if snapshot_steps()
            for m in ["teacher"] + [f"init-{i}" for i in variant_train_inits(v)]
            if m in eval_models(v, "h6")
        ],
    ),
    # Appendix A: the pilot's cosine(g, gamma) per norm site against step (train.pilot.variants).
    "figure_pilot": (
        "figure",
        "pilot",
        [((v, "pilot", ""), R(v, "pilot", "cosine.jsonl")) for v in PILOT.get("variants", []) if v in VARIANTS],
    ),
}


# The fast path (train.fast): the step each run ended at and its share of the full budget, beside its H6 and
# MT-Bench and those of the teacher and the full-budget students of the same method (the train log is its own
# detail).
REPORT_ARTIFACTS["table_fast_path"] = ("table", "fast_path", fast_path_items())
# The divergence study (issue 19): per variant (its source family) and init mapping, the mapping's class and
# fidelity beside the H6 (and MT-Bench) of the teacher, the mapping and the matched-budget students -- the H6 and
# MT-Bench tables' own inputs, plus each init's model dir (fidelity.json, conversion.json; its own detail).
# Where the variant has recovery curves, the snapshots and train logs of its students (tokens to 0.99 of the teacher).
# A variant enters where H6 evaluates its matched-budget students (not in config/fast.yaml, which has no grid).
DIVERGENCE_VARIANTS = [
    v
    for v in VARIANTS
    if any(parse_trained(m) and not parse_trained(m).stop and not is_control(m) for m in eval_models(v, "h6"))
]
REPORT_ARTIFACTS["table_divergence"] = (
    "table",
    "divergence",
    [((v, m, "h6"), p, d) for (v, m, _), p, d in REPORT_ARTIFACTS["table_h6"][2] if v in DIVERGENCE_VARIANTS]
    + [
        ((v, f"init-{n}", "fidelity"), model_dir(v, f"init-{n}"), model_dir(v, f"init-{n}"))
        for v in DIVERGENCE_VARIANTS
        for n in TRAIN_INITS
    ]
    + [((v, m, f"mtbench-{f}"), p, d) for (v, m, f), p, d in REPORT_ARTIFACTS["table_mtbench"][2] if v in DIVERGENCE_VARIANTS]
    # tokens to 0.99 of the teacher: the recovery curves (their own detail) and each student's train log
    + [
        (label, path, path)
        for v in DIVERGENCE_VARIANTS
        if v in recovery_variants()
        for m in recovery_models(v)
        for label, path in [((v, m, "train"), R(v, m, "train_log.jsonl"))] + recovery_curve_items(v, m, "recovery-{step}")
    ],
)
# The graft (issue 28): per variant with a graft axis (variants.<name>.convert.kv_heads), its primary mapping and
# every grafted init: the divergence table's inputs for those inits (H6 of the teacher, the mapping and the students
# trained from it; fidelity; tokens to 0.99 where it has recovery curves) plus each init's measured KV cache.
GRAFT_VARIANTS = [v for v in VARIANTS if graft_inits(v) and "h6" in evals_of(v)]
REPORT_ARTIFACTS["table_graft"] = (
    "table",
    "graft",
    [
        ((v, m, "h6"), R(v, "eval", m, "h6.json"), R(v, "eval", m, "h6"))
        for v in GRAFT_VARIANTS
        for m in eval_models(v, "h6")
        if in_graft_table(v, m)
    ]
    + [
        ((v, f"init-{i}", "fidelity"), model_dir(v, f"init-{i}"), model_dir(v, f"init-{i}"))
        for v in GRAFT_VARIANTS
        for i in [TRAIN_INIT] + graft_inits(v)
    ]
    + [((v, m, "kv"), R(v, "eval", m, "kv_cache.json"), R(v, "eval", m, "kv_cache.json")) for v in GRAFT_VARIANTS
       for m in kv_cache_models(v)]
    + [
        (label, path, path)
        for v in GRAFT_VARIANTS
        if v in recovery_variants()
        for m in recovery_models(v)
        if in_graft_table(v, m)
        for label, path in [((v, m, "train"), R(v, m, "train_log.jsonl"))] + recovery_curve_items(v, m, "recovery-{step}")
    ],
)
# Its figure: each family's gap to its teacher, the mapping alone and each method, per init mapping.
REPORT_ARTIFACTS["figure_divergence"] = ("figure", "divergence", REPORT_ARTIFACTS["table_divergence"][2])
REPORT_ARTIFACTS["figure_longctx"] = ("figure", "longctx", REPORT_ARTIFACTS["table_transfer_longctx"][2])
# The regime (issue 26; kept.report.regime, rules/regime.smk): per toy variant with a Teacher + UT control evaluated
# on H6 beside its teacher, their H6 and held-out pretraining-mixture loss, the control's train log (transfer tokens)
# and the pretraining logs of the teacher and of the teachers it descends from (pretraining tokens, final slope).
REGIME_TABLE_VARIANTS = [v for v in REGIME_VARIANTS if {"teacher", CONTROL} <= set(eval_models(v, "h6"))]
REPORT_ARTIFACTS["table_regime"] = (
    "table",
    "regime",
    [((v, m, "h6"), R(v, "eval", m, "h6.json"), R(v, "eval", m, "h6")) for v in REGIME_TABLE_VARIANTS for m in REGIME_MODELS]
    + [
        ((v, m, "mixture"), R(v, "eval", m, "mixture_loss.json"), R(v, "eval", m, "mixture_loss.json"))
        for v in REGIME_TABLE_VARIANTS
        for m in REGIME_MODELS
    ]
    + [((v, CONTROL, "train"), R(v, CONTROL, "train_log.jsonl"), R(v, CONTROL, "train_log.jsonl")) for v in REGIME_TABLE_VARIANTS]
    + [
        ((v, "teacher", f"pretrain-{t}"), R("teachers", f"{t}.train_log.jsonl"), R("teachers", f"{t}.train_log.jsonl"))
        for v in REGIME_TABLE_VARIANTS
        for t in teacher_chain(v)
    ],
)
# The split (toy suites only: their items carry the in / out-of-corpus tag): H6 and KoMMLU per model, and the
# MT-Bench rubric facts of each model's Orion-format answers (the toy judge's rubric is their detail).
SPLIT_MT = MTB["data"] == "toy"
REPORT_ARTIFACTS["table_split"] = (
    "table",
    "split",
    (
        [((v, m, "h6"), p, d) for (v, m, _), p, d in REPORT_ARTIFACTS["table_h6"][2]]
        + [((v, m, "kommlu"), p, d) for (v, m, _), p, d in REPORT_ARTIFACTS["table_kommlu"][2]]
        + [
            ((v, m, f"mtfacts-{f}"), R(v, "mtbench", "model_answer", f"{m}-{f}.jsonl"), MTB_FILES["rubric"])
            for v in VARIANTS
            for m in eval_models(v, "mtbench")
            for f in mtbench_formats(m)
            if SPLIT_MT and f == "orion"
        ]
    )
    if HARNESS["tasks_from"] == "toy"
    else [],
)
# Power: the minimum detectable paired H6 difference (80% power) of XKD against UT, from the H6 table's inputs.
# A variant enters where H6 evaluates UT and an XKD method from the same init on the transfer corpus.
H6_STUDENTS = {
    v: {(t.init, t.method) for t in map(parse_trained, eval_models(v, "h6")) if t and not t.corpus and not t.stop}
    for v in VARIANTS
}
POWER_VARIANTS = [
    v for v, found in H6_STUDENTS.items() if any((i, "ut") in found and {(i, "xkd_z"), (i, "xkd_h")} & found for i, _ in found)
]
REPORT_ARTIFACTS["table_power"] = (
    "table",
    "power",
    [
        ((v, m, "h6"), p, d)
        for (v, m, _), p, d in REPORT_ARTIFACTS["table_h6"][2]
        if v in POWER_VARIANTS and parse_trained(m) and not is_control(m)
    ],
)
REPORT_ARTIFACTS["figure_mtbench_categories"] = (
    "figure",
    "mtbench_categories",
    REPORT_ARTIFACTS["table_mtbench"][2],
)
REPORT_ARTIFACTS["figure_mtbench_spread"] = ("figure", "mtbench_spread", REPORT_ARTIFACTS["table_mtbench"][2])
REPORT_ARTIFACTS["figure_h6_spread"] = ("figure", "h6_spread", REPORT_ARTIFACTS["table_h6"][2])

REPORT_INPUTS = {
    a: {"summaries": [entry[1] for entry in items], "details": [entry[2] for entry in items if len(entry) > 2]}
    for a, (_, _, items) in REPORT_ARTIFACTS.items()
}
REPORT_OUTPUTS = {
    a: {ext: R("report", f"{kind}s", f"{name}.{ext}") for ext in REPORT_EXTS[kind]}
    for a, (kind, name, _) in REPORT_ARTIFACTS.items()
}
# Exactly what defines an artifact besides its input files: the row/legend labels, the trained students' init
# (display names), the paper column (paper tables only) and the PNG resolution (figures only).
REPORT_PARAMS = {
    a: {
        "kind": kind,
        "name": name,
        "labels": [list(entry[0]) for entry in items],
        "train_init": TRAIN_INIT,
        **({"paper_reference": REPORT_CFG["paper_reference"]} if name in REPORT_PAPER_TABLES else {}),
        **({"dpi": REPORT_CFG["dpi"]} if kind == "figure" else {}),
    }
    for a, (kind, name, items) in REPORT_ARTIFACTS.items()
}

# What the report calls each artifact (its caption is report/<kind>_<name>.rst). One rule per artifact, named
# report_<artifact>; an artifact with no inputs in this grid (e.g. no variant runs kommlu) has no rule and no target.
REPORT_TITLES = {
    "table_h6": "Table 3: H6 ablation",
    "table_mtbench": "Table 4: MT-Bench",
    "table_kommlu": "KoMMLU",
    "table_transfer_code": "Zero-shot transfer: code",
    "table_transfer_longctx": "Zero-shot transfer: long context",
    "table_fidelity": "Fidelity before training",
    "table_fast_path": "The fast path: stopped at parity",
    "table_divergence": "Divergence: cost of conversion per source family",
    "table_graft": "The graft: multi-head -> grouped-query attention, per G and init",
    "table_regime": "Regime: can the transfer budget still teach the teacher?",
    "table_split": "In / out of the transfer corpus",
    "table_power": "Power: the smallest paired H6 difference the bench detects",
    "figure_divergence": "Divergence: each family's gap to its teacher (± SE)",
    "figure_longctx": "Figure 4: long-context perplexity",
    "figure_mtbench_categories": "MT-Bench by category",
    "figure_train_loss": "Training loss (UT, XKD-h, XKD-z)",
    "figure_recovery": "Figure 2: recovery curves",
    "figure_pilot": "Appendix A: pilot (RMSNorm weights vs LayerNorm weights)",
    "figure_mtbench_spread": "MT-Bench spread of the students (± SE)",
    "figure_h6_spread": "H6 average of the init x method grid (± SE)",
}
REPORT_FORMATS = {"csv": "CSV", "md": "Markdown", "tex": "LaTeX", "png": "PNG", "pdf": "PDF"}
TARGETS.extend(
    path for a, (_, _, items) in REPORT_ARTIFACTS.items() if items for path in REPORT_OUTPUTS[a].values()
)


for _artifact, (_kind, _name, _items) in REPORT_ARTIFACTS.items():
    if not _items:
        continue

    # Small pandas/seaborn jobs: they run on the submitting host, not as cluster jobs.
    rule:
        name:
            f"report_{_artifact}"
        localrule: True
        input:
            summaries=REPORT_INPUTS[_artifact]["summaries"],
            details=REPORT_INPUTS[_artifact]["details"],
        output:
            **{
                ext: report(
                    path,
                    caption=f"../report/{_kind}_{_name}.rst",
                    category=f"{_kind.capitalize()}s",
                    labels={_kind: REPORT_TITLES[_artifact], "format": REPORT_FORMATS[ext]},
                )
                for ext, path in REPORT_OUTPUTS[_artifact].items()
            },
        params:
            **REPORT_PARAMS[_artifact],
        log:
            R(f"logs/report/{_artifact}.log"),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/report.yaml"
        script:
            "../scripts/report.py"


# docs/findings.md: every claim of the paper against this run (kept.report.findings), from the same result files
# as the tables (tag = the kind of file), the per-unit data beside each; a file that holds its own per-unit data
# (longctx.json, the pilot's cosine.jsonl) is its own detail, which the script reads as "none".
FINDINGS_ITEMS = (
    [(label + ("h6",), path, detail) for (label, path, detail) in
     [((v, m), R(v, "eval", m, "h6.json"), R(v, "eval", m, "h6")) for v in VARIANTS for m in eval_models(v, "h6")]]
    + [((v, m, f"mtbench-{f}"), p, d) for (v, m, f), p, d in REPORT_ARTIFACTS["table_mtbench"][2]]
    + [((v, m, "code"), p, d) for (v, m, _), p, d in REPORT_ARTIFACTS["table_transfer_code"][2]]
    + [((v, m, "longctx"), p, p) for (v, m, _), p in REPORT_ARTIFACTS["table_transfer_longctx"][2]]
    + [((v, "pilot", "pilot"), p, p) for (v, _, _), p in REPORT_ARTIFACTS["figure_pilot"][2]]
    # each family's class (conversion.json in the init's model dir, its own detail): the divergence claim (L3)
    + [((v, m, "conversion"), p, p) for (v, m, t), p, _ in REPORT_ARTIFACTS["table_divergence"][2] if t == "fidelity"]
    # the regime check (an explanation of every XKD-versus-UT claim): mixture losses and the logs behind the budget
    + [entry for entry in REPORT_ARTIFACTS["table_regime"][2] if entry[0][2] != "h6"]
    # the graft's and the layer fit's claims: the fidelity.json of each grafted or layer-fitted init and of the
    # mapping it starts from (its model dir, its own detail: exact for exact-lfit), beside the H6 above
    + [
        ((v, f"init-{i}", "fidelity"), model_dir(v, f"init-{i}"), model_dir(v, f"init-{i}"))
        for v in VARIANTS
        if extra_inits(v)
        for i in dict.fromkeys([TRAIN_INIT] + [parse_init(x).norm for x in extra_inits(v)] + extra_inits(v))
    ]
)
# the explanation each ablation corpus tests: its coverage alone (the full-coverage corpus), or its breadth
ARM_EXPLANATIONS = {
    name: "coverage" if abl.get("coverage") is not None and not abl.get("domains") and not abl.get("languages") else "corpus"
    for name, abl in CORPUS_ABLATIONS.items()
}
if FINDINGS_ITEMS:
    TARGETS.append(R("report", "findings.md"))


rule report_findings:
    input:
        summaries=[path for _, path, _ in FINDINGS_ITEMS],
        details=[detail for _, _, detail in FINDINGS_ITEMS],
    output:
        md=report(R("report", "findings.md"), caption="../report/findings.rst", category="Findings"),
    localrule: True
    params:
        labels=[list(label) for label, _, _ in FINDINGS_ITEMS],
        train_init=TRAIN_INIT,
        splits=HARNESS["tasks_from"] == "toy",  # the toy suites tag every item in / out of the transfer corpus
        arm_explanations=ARM_EXPLANATIONS,
    log:
        R("logs/report/findings.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/findings.py"
