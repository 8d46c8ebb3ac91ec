"""Measures a candidate policy on held-out prompts for the gates: reward under the
new reward model vs the previous policy, win rate, KL to the reference (adapter
disabled) and the share of degenerate answers. Sampling is seeded, so a re-run of
the evaluation on the same models gives the same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .gates import PolicyEval, is_degenerate
from .reward_model import RewardScorer, load_tokenizer

Prompt = list[dict[str, str]]


class PolicySampler:
    """A base model with an optional LoRA adapter, for seeded generation and KL."""

    def __init__(self, base_model: str, adapter: str | Path | None, device: str = "cpu") -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        self.tok = load_tokenizer(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model)
        self.model = (PeftModel.from_pretrained(model, str(adapter)) if adapter else model).to(device).eval()
        self.has_adapter = adapter is not None
        self.device = device

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, seed: int = 0) -> tuple[list[str], list[list[int]], list[list[int]]]:
        import torch

        texts, prompt_ids, answer_ids = [], [], []
        torch.manual_seed(seed)
        with torch.no_grad():
            for prompt in prompts:
                ids = self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
                inp = torch.tensor([ids], device=self.device)
                out = self.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True,
                                          temperature=0.7, top_k=50, max_new_tokens=max_new_tokens,
                                          pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
                new = out[0, len(ids):].tolist()
                if self.tok.eos_token_id in new:
                    new = new[:new.index(self.tok.eos_token_id)]
                prompt_ids.append(list(ids))
                answer_ids.append(new)
                texts.append(self.tok.decode(new, skip_special_tokens=True))
        return texts, prompt_ids, answer_ids

    def sequence_kl(self, prompt_ids: Sequence[list[int]], answer_ids: Sequence[list[int]]) -> float:
        """Mean over answers of sum_t log p(a_t) - log p_ref(a_t): the k1 estimate of
        KL(policy || reference) on the policy's own samples."""
        import torch

        if not self.has_adapter:
            return 0.0
        total = 0.0
        with torch.no_grad():
            for p_ids, a_ids in zip(prompt_ids, answer_ids, strict=True):
                if not a_ids:
                    continue
                ids = torch.tensor([p_ids + a_ids], device=self.device)
                logp = self._answer_logprobs(ids, len(p_ids))
                with self.model.disable_adapter():
                    ref = self._answer_logprobs(ids, len(p_ids))
                total += float((logp - ref).sum())
        return total / max(1, len(prompt_ids))

    def _answer_logprobs(self, ids, prompt_len: int):  # type: ignore[no-untyped-def]
        import torch

        logits = self.model(input_ids=ids).logits[0, prompt_len - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, prompt_len:, None])[:, 0]


def evaluate_policy(*, base_model: str, candidate_adapter: Path, previous_adapter: Path | None,
                    reward_model: Path, prompts: Sequence[Prompt], max_new_tokens: int,
                    max_length: int, seed: int = 0, device: str = "cpu") -> PolicyEval:
    candidate = PolicySampler(base_model, candidate_adapter, device)
    cand_texts, p_ids, a_ids = candidate.generate(prompts, max_new_tokens, seed)
    kl = candidate.sequence_kl(p_ids, a_ids)
    del candidate
    previous = PolicySampler(base_model, previous_adapter, device)
    prev_texts, _, _ = previous.generate(prompts, max_new_tokens, seed)
    del previous
    scorer = RewardScorer(reward_model, max_length=max_length, device=device)
    cand_scores = scorer.score(prompts, cand_texts)
    prev_scores = scorer.score(prompts, prev_texts)
    n = max(1, len(prompts))
    wins = sum(1.0 if c > p else 0.5 if c == p else 0.0 for c, p in zip(cand_scores, prev_scores, strict=True))
    return PolicyEval(
        reward_mean=sum(cand_scores) / n, previous_reward_mean=sum(prev_scores) / n, win_rate=wins / n,
        kl=kl, degenerate_rate=sum(is_degenerate(t) for t in cand_texts) / n,
    )
