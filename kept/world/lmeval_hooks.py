"""Functions the toy lm-eval task YAMLs call through ``!function toy_utils.NAME``.

The eval-data writer copies this file next to the YAMLs as ``toy_utils.py`` (lm-eval loads ``!function`` modules
from the YAML's directory), so it must stay self-contained: standard library and numpy only.
"""

import numpy as np


def process_results_mc2(doc, results):
    """TruthfulQA mc2: the normalised probability mass of the true answers (reported as ``acc``, as lm-eval's
    truthfulqa_mc2 does)."""
    ll = np.array([r[0] for r in results], dtype=np.float64)
    probs = np.exp(ll - ll.max())
    probs = probs / probs.sum()
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum())}


def winogrande_doc_to_text(doc):
    """Winogrande partial scoring: the index of the correct option (the options go into the context)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc):
    """The part of the sentence after the blank, scored under each filled-in context."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    """The sentence up to the blank with each option filled in."""
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]
