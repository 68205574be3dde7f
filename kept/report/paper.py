"""Numbers the Llamion technical report publishes, shown beside ours when ``report.paper_reference`` is on.

Keys are the workflow's variant names (``base``, ``chat``) and the paper's method rows. Scores are as printed in
the paper: H6 and KoMMLU in percent, MT-Bench on the 1-10 scale. The paper's students start from OPM (the
``paper`` norm mapping), so its UT / XKD rows only stand beside ours when training starts from ``init-paper``.
"""

from __future__ import annotations

H6_COLUMNS: tuple[str, ...] = ("ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K")

# Table 3 (H6, Open LLM Leaderboard v1 settings): per variant, per method: six columns then the average.
TABLE3: dict[str, dict[str, tuple[float, ...]]] = {
    "base": {
        "original": (54.27, 80.98, 69.39, 40.06, 74.35, 45.94, 60.83),
        "opm": (26.02, 30.50, 26.98, 45.35, 56.75, 1.52, 31.19),
        "ut": (52.61, 78.35, 67.57, 39.11, 72.39, 36.58, 57.77),
        "xkd_h": (54.42, 80.00, 68.36, 39.33, 73.37, 44.12, 59.93),
        "xkd_z": (55.12, 80.40, 69.40, 39.74, 73.77, 44.70, 60.53),
    },
    "chat": {
        "original": (54.35, 79.03, 62.68, 44.20, 72.77, 41.32, 59.06),
        "opm": (25.17, 34.25, 31.17, 51.21, 60.38, 3.26, 34.24),
        "ut": (52.22, 76.73, 60.94, 42.20, 71.19, 33.59, 56.15),
        "xkd_h": (54.01, 78.31, 61.51, 42.39, 72.22, 40.41, 58.14),
        "xkd_z": (54.27, 78.96, 62.15, 42.90, 73.01, 41.85, 58.86),
    },
}

# Table 4 (MT-Bench, GPT-4 judge): turn 1, turn 2, average. The teacher answered in Orion's format, the
# students in the Llama-3 format.
TABLE4: dict[str, dict[str, tuple[float, float, float]]] = {
    "base": {
        "original": (6.481, 4.613, 5.547),
        "opm": (1.000, 1.000, 1.000),
        "ut": (5.300, 3.763, 4.532),
        "xkd_h": (6.250, 4.656, 5.453),
        "xkd_z": (6.456, 4.525, 5.491),
    },
    "chat": {
        "original": (7.744, 6.488, 7.116),
        "opm": (1.338, 1.113, 1.226),
        "ut": (6.556, 4.861, 5.709),
        "xkd_h": (7.744, 6.013, 6.879),
        "xkd_z": (7.731, 6.338, 7.034),
    },
}

# KoMMLU: Llamion-Base's registered Open Ko-LLM Leaderboard score (the XKD-z student, the paper's default
# objective). The leaderboard's test set is private; ours is the public kmmlu proxy.
KOMMLU: dict[str, dict[str, float]] = {"base": {"xkd_z": 66.87}}


def paper_method(model: str, *, train_init: str) -> str | None:
    """The paper's row for one of our grid models, or None when the paper has no comparable row."""
    if model == "teacher":
        return "original"
    if model == "init-paper":
        return "opm"
    if model in ("ut", "xkd_h", "xkd_z") and train_init == "paper":
        return model
    return None
