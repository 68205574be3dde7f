"""Convert a pre-norm LayerNorm decoder (Orion, OLMo, StableLM, GPT-NeoX, Phi) into a stock ``LlamaForCausalLM``.

Layout: ``families/`` (one module of data per source family), ``plan`` (the generic planner: steps, Llama config,
exactness class), ``ops`` (the arithmetic of each step), ``writer`` (streaming safetensors writer), ``run``
(orchestration, tokenizer, fidelity report, card, CLI).
"""

from kept.convert.run import DTYPES, OVERWRITE_HINT, cli, convert_checkpoint
from kept.convert.writer import parse_size

__all__ = ["DTYPES", "OVERWRITE_HINT", "cli", "convert_checkpoint", "parse_size"]
