"""The reward PPO is given, on a real tiny reward model read through TRL's own
`get_reward`: an empty answer scores below every other answer of its batch, and
every other answer scores exactly what the reward head says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.policy.ppo import generation_suffix
from services.trainer.policy.ppo_models import EMPTY_ANSWER_MARGIN, FinalAnswerReward, floor_empty_answers
from shared.models.reward import load_tokenizer


def test_an_empty_answer_is_floored_below_the_batch_and_nothing_else_changes(tiny_models: tuple[Path, Path]) -> None:
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.utils import get_reward

    policy, reward_base = tiny_models
    tok = load_tokenizer(policy)
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(reward_base, num_labels=1).eval()
    suffix = generation_suffix(tok)
    assert suffix == tok.convert_tokens_to_ids(["<|assistant|>"])

    prompts = [[{"role": "user", "content": text}] for text in ("how do I reset my password?", "hi", "a fox?")]
    queries = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    answers = [tok.encode("open settings and choose reset", add_special_tokens=False) + [eos],
               [eos],  # nothing: EOS right after the generation prompt
               tok.encode("the quick brown", add_special_tokens=False)]  # cut at the cap
    width, length = max(map(len, queries)), max(map(len, answers))
    rows = [[pad] * (width - len(q)) + q + a + [pad] * (length - len(a)) for q, a in zip(queries, answers, strict=True)]
    batch = torch.tensor(rows)

    with torch.no_grad():
        _, floored, _ = get_reward(FinalAnswerReward(classifier, eos, suffix), batch, pad, width)
        _, plain, _ = get_reward(FinalAnswerReward(classifier, eos, []), batch, pad, width)  # no floor
    assert floored[0] == pytest.approx(float(plain[0])) and floored[2] == pytest.approx(float(plain[2]))
    assert floored[1] == pytest.approx(min(float(plain[0]), float(plain[2])) - EMPTY_ANSWER_MARGIN, abs=1e-5)
    assert floored[1] != pytest.approx(float(plain[1]))


def test_the_floor_rule_for_text_scores() -> None:
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0])
    empty = torch.tensor([False, True, False, False])
    assert floor_empty_answers(scores, empty).tolist() == [0.5, -1.0 - EMPTY_ANSWER_MARGIN, -1.0, 2.0]
    assert floor_empty_answers(scores, torch.zeros(4, dtype=torch.bool)).tolist() == scores.tolist()
    all_empty = floor_empty_answers(scores, torch.ones(4, dtype=torch.bool))
    assert all_empty.tolist() == [-1.0 - EMPTY_ANSWER_MARGIN] * 4
