"""bf16 against float32 on this CPU, for SmolLM2: what `labeling.generation.fast_bf16` decides.

In one process, the two dtypes alternating (fp32, bf16, fp32, bf16) so a busy neighbour slows
both alike:
1. sampling: 32 chat eval prompts x 4 replies (1.0 and 0.7), the chat demo's batch and length;
2. DPO: one round on 16 of the shipped seed preferences with the chat demo's `[dpo]` values,
   `dpo.bf16` false and true.
Printed: each run's seconds, and bf16's speed as a ratio of fp32's (tokens/s, pairs/s), with
whether this CPU has AMX and AVX512-BF16 and what `fast_bf16` picks. --quick: 8 prompts, 8
pairs, one run of each.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.bench_chat import (
    _smollm2,
    chat_generation_settings,
    dpo_round_seconds,
    seed_records,
)


def _sampling_seconds(model: Path, prompts: list[str], bf16: bool) -> tuple[float, int]:
    import torch

    from labeling.generation import load_sampler

    sampler = load_sampler(model, chat_generation_settings(dtype="bfloat16" if bf16 else "float32"))
    try:
        assert next(sampler.model.parameters()).dtype == (torch.bfloat16 if bf16 else torch.float32)
        start = time.perf_counter()
        rows = sampler.sample(prompts, n=4, temperatures=[1.0, 0.7], seed=0)
        return time.perf_counter() - start, sum(s.n_tokens for row in rows for s in row)
    finally:
        sampler.close()


def main(quick: bool = False) -> None:
    import torch

    from labeling.chat_task import chat_prompts
    from labeling.generation import fast_bf16

    model = _smollm2()
    prompts = [text for text, _, split in chat_prompts() if split == "eval"][: 8 if quick else 32]
    records = seed_records(8 if quick else 16)
    order = (False, True) if quick else (False, True, False, True)
    tokens_per_s: dict[bool, list[float]] = {False: [], True: []}
    pairs_per_s: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in order:
        seconds, tokens = _sampling_seconds(model, prompts, bf16)
        tokens_per_s[bf16].append(tokens / seconds)
        print(
            f"sampling {'bf16' if bf16 else 'fp32'}: {tokens} tokens in {seconds:.1f}s", flush=True
        )
    for bf16 in order:
        seconds, _ = dpo_round_seconds(model, records, bf16=bf16)
        pairs_per_s[bf16].append(len(records) / seconds)
        print(
            f"DPO {'bf16' if bf16 else 'fp32'}: {len(records)} pairs in {seconds:.1f}s", flush=True
        )
    amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    print(
        f"bf16 vs fp32 on this CPU (AMX {amx}, AVX512-BF16 {avx512_bf16}; fast_bf16 picks "
        f"{'bf16' if fast_bf16('cpu') else 'fp32'}): sampling "
        f"{statistics.median(tokens_per_s[True]) / statistics.median(tokens_per_s[False]):.2f}x "
        f"the tokens/s, DPO "
        f"{statistics.median(pairs_per_s[True]) / statistics.median(pairs_per_s[False]):.2f}x "
        f"the pairs/s"
    )


if __name__ == "__main__":
    main()
