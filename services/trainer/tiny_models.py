"""Tiny models built from config, on disk, offline: what tests and the throughput
benchmarks train in seconds on a CPU (the demo runs SmolLM2-135M-Instruct).

The tokenizer is a byte-level BPE trained on a few lines of text at build time, so
nothing is ever downloaded (HF_HUB_OFFLINE holds) and any text encodes. Policy,
reward and value models all share it, which PPO requires: the reward and value
models read the policy's token ids.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "how do I reset my password? open settings and choose reset password.",
    "I am sorry, I cannot help with that request.",
    "here is a short answer with a helpful explanation and an example.",
    "question answer user assistant system model reward policy value",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' \" ( ) - _ / \\ @ # $ % & * + = < > [ ] { }",
]


def build_tokenizer(vocab_size: int = 384):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer with a chat template and pad/eos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left
    return fast


def _llama_config(tokenizer, **extra):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def build_tiny_policy(path: str | Path, seed: int = 0) -> Path:
    """A tiny causal LM + tokenizer saved at `path` (a base policy)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_reward_base(path: str | Path, seed: int = 1) -> Path:
    """A tiny sequence-classification model (1 label) sharing the policy tokenizer:
    the base of reward and value models."""
    import torch
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_models(root: str | Path) -> tuple[Path, Path]:
    """Policy and reward base under `root`; returns (policy_path, reward_base_path)."""
    root = Path(root)
    return build_tiny_policy(root / "policy"), build_tiny_reward_base(root / "reward-base")


if __name__ == "__main__":  # python -m services.trainer.tiny_models DIR
    import sys

    print(build_tiny_models(sys.argv[1] if len(sys.argv) > 1 else "./.rlhf-loop/tiny-models"))
