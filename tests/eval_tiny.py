"""Tiny models, tokenizer and eval data for the evaluation tests (imported by tests/test_eval*.py,
test_mtbench*.py, test_judge*.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("the cat sat on a mat dog ran fast big small red blue one two three four five answer question "
         "human assistant def return print import value list if else for in range x y z").split()
KOREAN = "하나 둘 셋 고양이 개 답 질문 빨간 파란".split()


def make_tokenizer_model(out_dir: Path) -> Path:
    """A small SentencePiece BPE model with Orion's special ids (<unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = out_dir / "corpus.txt"
    vocab = WORDS + KOREAN + list("0123456789+-=()[]:,.")
    corpus.write_text("\n".join(" ".join(rng.choice(vocab) for _ in range(14)) for _ in range(3000)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tok"), vocab_size=420, model_type="bpe",
        pad_id=-1, unk_id=0, bos_id=1, eos_id=2, character_coverage=1.0, byte_fallback=True,
        minloglevel=2, num_threads=1,
    )
    return out_dir / "tok.model"


def orion_cfg(max_pos: int = 512) -> dict:
    return dict(model_type="orion", vocab_size=420, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=max_pos, rope_theta=10000.0)


def make_teacher(out: Path, tok_model: Path, *, seed: int = 0, chat: bool = True, max_pos: int = 512) -> Path:
    """A random tiny Orion-format teacher."""
    from kept.orion import new_orion_model, save_orion_checkpoint

    torch.manual_seed(seed)
    model = new_orion_model(orion_cfg(max_pos))
    return save_orion_checkpoint(model, out, tokenizer_model=tok_model, chat=chat)


def make_student(out: Path, tok_model: Path, *, seed: int = 1, max_pos: int = 512) -> Path:
    """A random tiny stock-Llama student with the converted-model tokenizer files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kept.tokenizer import write_tokenizer

    torch.manual_seed(seed)
    c = orion_cfg(max_pos)
    cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                      num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_attention_heads"],
                      max_position_embeddings=max_pos, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    write_tokenizer(model_file=tok_model, output=out, model_max_length=max_pos)
    return out


def make_mc_task(task_dir: Path, name: str = "tiny_mc", *, n: int = 12, n_dev: int = 6, seed: int = 0) -> Path:
    """A local lm-eval multiple-choice task (YAML with absolute data_files paths, separate few-shot split)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def row() -> dict:
        choices = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(4)]
        return {"question": " ".join(rng.choice(WORDS) for _ in range(6)), "choices": choices,
                "label": rng.randrange(4)}

    for split, count in (("test", n), ("dev", n_dev)):
        with open(task_dir / f"{name}.{split}.jsonl", "w") as fh:
            for _ in range(count):
                fh.write(json.dumps(row()) + "\n")
    (task_dir / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {task_dir / f'{name}.test.jsonl'}\n"
        f"    dev: {task_dir / f'{name}.dev.jsonl'}\n"
        "test_split: test\n"
        "fewshot_split: dev\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: acc_norm\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return task_dir / f"{name}.yaml"


MT_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write about the cat.", "Now make it shorter."]},
    {"question_id": 101, "category": "reasoning", "turns": ["one two three?", "and four?"],
     "reference": ["four", "five"]},
    {"question_id": 111, "category": "math", "turns": ["What is one and two?", "And three?"],
     "reference": ["three", "six"]},
    {"question_id": 121, "category": "coding", "turns": ["def f return x", "import list"],
     "reference": ["def f(): return 1", "import x"]},
    {"question_id": 131, "category": "extraction", "turns": ["list the red value", "the blue one?"]},
    {"question_id": 141, "category": "stem", "turns": ["why is the dog big?", "explain again"]},
    {"question_id": 151, "category": "humanities", "turns": ["who is the human?", "and the assistant?"]},
    {"question_id": 161, "category": "roleplay", "turns": ["be a cat", "be a dog"]},
]


def write_questions(path: Path, questions: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for q in questions or MT_QUESTIONS:
            fh.write(json.dumps(q) + "\n")
    return path


# The four single-grading judge prompts, in FastChat's judge_prompts.jsonl layout (texts are short stand-ins
# written for the tests; the real file is fetched by the workflow).
JUDGE_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "You are a helpful judge.",
     "prompt_template": "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                        "[The End of Assistant's Answer]", "description": "", "category": "general",
     "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "You are a helpful judge.",
     "prompt_template": "[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n\n[Answer]\n{answer}",
     "description": "", "category": "math", "output_format": "[[rating]]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "Judge the second answer.",
     "prompt_template": "Q1 {question_1}\nA1 {answer_1}\nQ2 {question_2}\nA2 {answer_2}",
     "description": "", "category": "general", "output_format": "[[rating]]"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "Judge the second answer.",
     "prompt_template": "Q1 {question_1}\nR1 {ref_answer_1}\nA1 {answer_1}\nQ2 {question_2}\n"
                        "R2 {ref_answer_2}\nA2 {answer_2}", "description": "", "category": "math",
     "output_format": "[[rating]]"},
]


def write_prompts(path: Path) -> Path:
    with open(path, "w") as fh:
        for p in JUDGE_PROMPTS:
            fh.write(json.dumps(p) + "\n")
    return path
