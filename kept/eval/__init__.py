"""Evaluation: lm-eval suites (H6, KoMMLU, recovery curves), MT-Bench answers and judgments, long-context
perplexity and the code probe. Summaries follow the formats in docs/architecture.md."""
