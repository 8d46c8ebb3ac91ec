"""Measures a candidate against the incumbent on held-out prompts, for the gates.

Both answer the same prompts with the same seeds (batched, left-padded), so an
adapter that changes nothing gives the very same answers and every comparison is a
tie. A judge independent of the candidate's reward model (judge.py) scores both; the
paired sign test on wins and losses is the evidence. KL is measured against the
training reference on the candidate's own samples; degenerate answers are counted.
"""

from __future__ import annotations

import json
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.models.reward import load_tokenizer
from shared.stats import PairedComparison, compare

from .gates import PolicyEval, is_degenerate
from .judge import Judge

Prompt = list[dict[str, str]]
CANDIDATE, INCUMBENT = "candidate", "incumbent"


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_ids: list[int]
    answer_ids: list[int]
    finished: bool


class PolicySampler:
    """One base model with named LoRA adapters; `None` as a version is the base."""

    def __init__(self, base_model: str, adapters: dict[str, Path], device: str = "cpu") -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        self.tok = load_tokenizer(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(base_model)
        for name, path in adapters.items():
            if isinstance(model, PeftModel):
                model.load_adapter(str(path), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        self.model = model.to(device).eval()
        self.device = device

    def _using(self, version: str | None):  # type: ignore[no-untyped-def]
        from contextlib import nullcontext

        if version is None:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
        self.model.set_adapter(version)
        return nullcontext()

    def generate(self, version: str | None, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float,
                 seed: int = 0, batch_size: int = 16) -> list[Answer]:
        import torch

        answers: list[Answer] = []
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        with torch.no_grad(), self._using(version):
            for start in range(0, len(prompts), batch_size):
                ids = [self.tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                       for p in prompts[start:start + batch_size]]
                width = max(map(len, ids))
                inp = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids], device=self.device)
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
                torch.manual_seed(seed + start)
                out = self.model.generate(input_ids=inp, attention_mask=mask, do_sample=True, temperature=temperature,
                                          top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                          eos_token_id=eos)
                for prompt_ids, row in zip(ids, out[:, width:].tolist(), strict=True):
                    finished = eos in row
                    row = row[:row.index(eos)] if finished else [t for t in row if t != pad]
                    answers.append(Answer(self.tok.decode(row, skip_special_tokens=True), list(prompt_ids), row,
                                          finished))
        return answers

    def sequence_kl(self, version: str, reference: str | None, answers: Sequence[Answer],
                    batch_size: int = 16) -> float:
        """Mean over answers of sum_t log p(a_t) - log p_ref(a_t): the k1 estimate of
        KL(policy || reference) on the policy's own samples (batched, right-padded)."""
        import torch

        total = 0.0
        scored = [a for a in answers if a.answer_ids]
        with torch.no_grad():
            for start in range(0, len(scored), batch_size):
                chunk = scored[start:start + batch_size]
                rows = [a.prompt_ids + a.answer_ids for a in chunk]
                width = max(map(len, rows))
                ids = torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows], device=self.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
                with self._using(version):
                    logp = self._token_logprobs(ids, mask)
                with self._using(reference):
                    ref = self._token_logprobs(ids, mask)
                for row, answer in enumerate(chunk):
                    first, last = len(answer.prompt_ids) - 1, len(answer.prompt_ids) + len(answer.answer_ids) - 1
                    total += float((logp[row, first:last] - ref[row, first:last]).sum())
        return total / max(1, len(answers))

    def _token_logprobs(self, ids, mask):  # type: ignore[no-untyped-def]
        """log p(token t+1 | tokens <= t) for every position t."""
        import torch

        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]


def _cache_file(cache_dir: Path | None, version: str, prompts: Sequence[Prompt], params: dict[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps([prompts, params], sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{version}-{digest}.json"


def incumbent_answers(sampler: PolicySampler, version_name: str, adapter: str | None, prompts: Sequence[Prompt],
                      params: dict[str, Any], cache_dir: Path | None) -> list[Answer]:
    """The incumbent's answers, reused across runs until it changes (a gated run
    followed by another pays for the incumbent once)."""
    file = _cache_file(cache_dir, version_name, prompts, params)
    if file is not None and file.is_file():
        return [Answer(**a) for a in json.loads(file.read_text())]
    answers = sampler.generate(adapter, prompts, **params)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps([a.__dict__ for a in answers]))
    return answers


@dataclass(frozen=True)
class Evaluation:
    result: PolicyEval
    examples: list[dict[str, str]]  # a few prompt / candidate / incumbent triples, for the manifest


def evaluate_policy(*, base_model: str, candidate_adapter: Path, incumbent: str | None, incumbent_adapter: Path | None,
                    reference: str, judge: Judge, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float,
                    seed: int = 0, device: str = "cpu", cache_dir: Path | None = None) -> Evaluation:
    adapters = {CANDIDATE: candidate_adapter}
    if incumbent_adapter is not None:
        adapters[INCUMBENT] = incumbent_adapter
    sampler = PolicySampler(base_model, adapters, device)
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    cand = sampler.generate(CANDIDATE, prompts, **params)
    inc = incumbent_answers(sampler, incumbent or "base", INCUMBENT if incumbent_adapter else None, prompts, params,
                            cache_dir)
    ref_adapter = INCUMBENT if reference == "previous" and incumbent_adapter is not None else None
    kl = sampler.sequence_kl(CANDIDATE, ref_adapter, cand)
    kl_base = kl if ref_adapter is None else sampler.sequence_kl(CANDIDATE, None, cand)
    del sampler
    cand_scores = judge.score(prompts, [a.text for a in cand])
    inc_scores = judge.score(prompts, [a.text for a in inc])
    comparison: PairedComparison = compare(cand_scores, inc_scores)
    n = max(1, len(prompts))
    result = PolicyEval(
        prompts=len(prompts), wins=comparison.wins, losses=comparison.losses, ties=comparison.ties,
        win_rate=comparison.win_rate, p_value=comparison.p_value, judge=judge.name,
        judge_score_delta=(sum(cand_scores) - sum(inc_scores)) / n, kl=kl, kl_base=kl_base,
        degenerate_rate=sum(is_degenerate(a.text) for a in cand) / n,
        finished_rate=sum(a.finished for a in cand) / n, incumbent_finished_rate=sum(a.finished for a in inc) / n,
    )
    examples = [{"prompt": p[-1]["content"][:300], "candidate": c.text[:500], "incumbent": i.text[:500]}
                for p, c, i in list(zip(prompts, cand, inc, strict=True))[:3]]
    return Evaluation(result, examples)
