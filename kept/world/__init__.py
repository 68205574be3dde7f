"""The offline toy world: a generated multilingual world with known facts, its tokenizer, evaluation suites and
Orion-format toy teachers, so every stage of the workflow yields real numbers without the hub.

Modules: :mod:`~kept.world.lexicon` (names, words, templates in en/ko/zh/ja), :mod:`~kept.world.generator` (facts,
held-out split), :mod:`~kept.world.items` (items in the evaluation formats), :mod:`~kept.world.render` (training
text, the ``world`` step), :mod:`~kept.world.tokenizer`, :mod:`~kept.world.evaldata`, :mod:`~kept.world.judge`
(the toy MT-Bench judge), :mod:`~kept.world.pretrain` (teachers through ``kept.train``), :mod:`~kept.world.cli`.
"""
