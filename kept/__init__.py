"""KEPT: Efficient Knowledge Preservation for Transformation.

Convert a LayerNorm LLM in Orion's format into a stock ``LlamaForCausalLM`` (NPM + OPM), recover it by
cross-architecture distillation (XKD), and evaluate it with the Llamion report's protocols.
"""

__version__ = "0.1.0"
