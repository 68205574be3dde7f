"""Convert a decoder-only LLM of any supported family (Orion, and the zoo: every dense decoder family of the pinned
transformers, plus InternLM2 and Baichuan2-7B) into a stock ``LlamaForCausalLM``: exact where the algebra allows,
else approximate and measured.

Layout: ``families/`` (one module of data per source family), ``plan`` (the generic planner: steps, Llama config,
exactness class, fits), ``ops`` (the arithmetic of each step), ``writer`` (streaming safetensors writer),
``stream`` (any checkpoint layer by layer with its family's classes; the calibration fits), ``remote``
(plain-PyTorch ports of remote-code families), ``run`` (orchestration, tokenizer, fidelity report, card, CLI).
"""

from kept.convert.run import DTYPES, OVERWRITE_HINT, cli, convert_checkpoint
from kept.convert.writer import parse_size

__all__ = ["DTYPES", "OVERWRITE_HINT", "cli", "convert_checkpoint", "parse_size"]
