"""The ``kept`` command: ``kept <command> [args]``. Each command's options live with its module."""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("kept.convert:cli", "convert a LayerNorm decoder (orion, olmo, stablelm, gpt_neox, phi) to stock Llama"),
    "card": ("kept.card:cli", "(re)write a converted or trained model's card, with evaluation summaries"),
    "world": ("kept.world.cli:world_cli", "generate the offline toy world"),
    "train-tokenizer": ("kept.world.cli:tokenizer_cli", "train the toy SentencePiece tokenizer"),
    "eval-data": ("kept.world.cli:eval_data_cli", "write the toy evaluation suites"),
    "pretrain": ("kept.world.cli:pretrain_cli", "pretrain a toy teacher in Orion format"),
    "prepare-corpus": ("kept.corpus:cli", "balance and pack the transfer corpus"),
    "train": ("kept.train.cli:train_cli", "run UT / XKD-h / XKD-z training"),
    "cache-teacher": ("kept.train.cli:cache_cli", "cache the teacher's top-k log-probs for offline XKD-z"),
    "pilot": ("kept.train.cli:pilot_cli", "Appendix-A pilot: learn only the RMSNorm weights"),
    "eval-harness": ("kept.eval.cli:harness_cli", "run lm-eval tasks (H6, KoMMLU) on a model"),
    "mtbench-answer": ("kept.eval.cli:mtbench_answer_cli", "generate MT-Bench answers"),
    "mtbench-judge": ("kept.eval.cli:mtbench_judge_cli", "judge MT-Bench answers"),
    "longctx": ("kept.eval.cli:longctx_cli", "perplexity against input length"),
    "code-probe": ("kept.eval.cli:code_cli", "code perplexity and answer accuracy"),
    "report": ("kept.report.cli:report_cli", "build the paper's tables and figures"),
    "check-config": ("kept.configcheck:cli", "parse, merge and validate workflow config files, naming the file"),
}


def usage() -> str:
    lines = ["usage: kept <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kept: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from kept.errors import KeptError

    try:
        return int(func(rest) or 0)
    except KeptError as exc:
        print(f"kept {name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment, not a bug: one line naming the path (kept.atomic says what to do)
        from kept.atomic import os_fault

        fault = os_fault(exc, path=exc.filename or "?", output=False)
        print(f"kept {name}: error: {fault or f'{exc.filename or name}: {exc.strerror or exc}'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
