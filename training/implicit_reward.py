"""DPO's implicit reward on held-out preferences: how well a trained policy ranks pairs it never
saw.

A DPO policy pi defines a reward against its reference, r(x, y) = beta * log pi(y|x) / ref(y|x).
The margin and accuracy TRL logs while training come from the round's own batches (eight pairs a
step, each measured before its step), so they say how hard that round's pairs were, not whether
the policy got better: a first round on hand-written seeds scores high, a later round on two of the
policy's own close replies scores near chance. Here the reward is measured on one fixed set of
pairs for every round, against pi_0: the held-out prompts' pi_0 replies, every two of a prompt's,
ranked by the gold judge. A round that taught the policy the judge's taste raises the accuracy
(the share of pairs whose chosen reply gets the higher reward) and the margin (the mean reward of
the chosen reply minus the rejected one's) over the previous version's (README, "Measured: three
simulated iterations").

Log-probabilities are teacher-forced the way TRL's DPO sees a pair: the prompt through the chat
template with its generation prompt, the reply as the assistant's turn (without a template, the
prompt as plain text and the reply with the end-of-sequence token), the whole cut at `max_length`
tokens, batched (a batch's sequences right-padded), in float32: under bf16 autocast the
log-probabilities of SmolLM2's replies moved by 1.1 nats on average (up to 3.5), enough to flip a
close pair, and scoring was no faster on the 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

from labeling.generation import as_messages, render_prompt

Triple = tuple[str, str, str]  # (prompt, chosen, rejected)


def judged_pairs(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    judge: Callable[[str, str], float],
    *,
    min_gap: float = 0.0,
) -> list[Triple]:
    """(prompt, chosen, rejected) for every two of each prompt's replies (the first and second,
    first and third, ..., second and third, ...), the judge's higher score chosen; a tie, or a
    pair whose scores differ by less than `min_gap`, is left out. Every pair rather than disjoint
    ones: the same replies (and log-probabilities) give k(k-1)/2 comparisons instead of k/2, so
    the accuracy and margin are averages over several times as many pairs, a lower-variance
    estimate of the same quantity."""
    triples = []
    for prompt, replies in zip(prompts, responses, strict=True):
        scores = [judge(prompt, reply) for reply in replies]
        for (a, score_a), (b, score_b) in combinations(zip(replies, scores, strict=True), 2):
            if score_a != score_b and abs(score_a - score_b) >= min_gap:
                triples.append((prompt, a, b) if score_a > score_b else (prompt, b, a))
    return triples


def _token_ids(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    """The ids of prompt and reply together, and how many of them are the prompt's."""
    head, special = render_prompt(tokenizer, prompt)
    if special:
        full = tokenizer.apply_chat_template(
            [*as_messages(prompt), {"role": "assistant", "content": reply}], tokenize=False
        )
    else:
        full = head + reply + (tokenizer.eos_token or "")
    head_ids = tokenizer(head, add_special_tokens=not special)["input_ids"]
    ids = tokenizer(full, add_special_tokens=not special)["input_ids"]
    return ids, len(head_ids)


def completion_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    replies: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 8,
) -> list[float]:
    """log model(reply | prompt) for each pair, summed over the reply's tokens within the first
    `max_length` tokens (a prompt that fills them leaves its reply 0 tokens, and 0.0)."""
    import torch

    device = model.device
    encoded = [_token_ids(tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
    encoded = [(ids[:max_length], head) for ids, head in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    # Longest first, so that a batch holds sequences of about one length.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            seq = encoded[i][0]
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = logits.log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0].cpu()
        for j, i in enumerate(rows):
            seq, head = encoded[i]
            # position t predicts token t + 1: the reply's tokens are head .. len(seq) - 1
            out[i] = (
                float(token_logps[j, head - 1 : len(seq) - 1].sum()) if head < len(seq) else 0.0
            )
    return out


def policy_logprobs(path: str, triples: Sequence[Triple], *, max_length: int) -> list[float]:
    """The chosen then the rejected replies' log-probabilities under the checkpoint at `path`
    (float32), on a CUDA GPU when there is one; a reply in several pairs is scored once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    wanted = [(t[0], t[1]) for t in triples] + [(t[0], t[2]) for t in triples]
    unique = list(dict.fromkeys(wanted))
    logps = completion_logprobs(
        model,
        tokenizer,
        [prompt for prompt, _ in unique],
        [reply for _, reply in unique],
        max_length=max_length,
    )
    scored = dict(zip(unique, logps, strict=True))
    return [scored[key] for key in wanted]


def implicit_reward(
    policy: Sequence[float], reference: Sequence[float], *, beta: float
) -> dict[str, Any]:
    """Accuracy and mean margin of beta * log(policy / reference) over pairs, from the chosen
    then the rejected replies' log-probabilities (`policy_logprobs`) under each model."""
    n = len(policy) // 2
    if n == 0 or len(policy) != 2 * n or len(reference) != len(policy):
        raise ValueError(
            f"implicit_reward needs the chosen then the rejected replies' log-probabilities under "
            f"both models, as many of each ({len(policy)}, {len(reference)})"
        )
    rewards = [beta * (p - r) for p, r in zip(policy, reference, strict=True)]
    margins = [rewards[i] - rewards[n + i] for i in range(n)]
    return {
        "n_pairs": n,
        "accuracy": round(sum(m > 0 for m in margins) / n, 4),
        "margin": round(sum(margins) / n, 4),
    }
