"""Labeling benchmarks, each against a baseline measured in the same process.

1. Generation: batched transformers sampling (left-padded prompts, `num_return_sequences`) against
   one sample at a time, for the same prompts, sample counts and temperatures, on the demo policy.
2. Proxy scoring: the embedded proxy scoring fresh responses in groups (one embedding batch) against
   one response at a time; and the scoring of already embedded texts (the cache a round reuses).

The policy: $PREFLOOP_BENCH_POLICY, else the demo policy built (once) into
$PREFLOOP_TEST_CACHE/demo-policy or ~/.cache/prefloop/demo-policy.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path


def _policy_path() -> Path:
    given = os.environ.get("PREFLOOP_BENCH_POLICY")
    if given:
        return Path(given)
    from training.demo_policy import build_demo_policy

    root = Path(os.environ.get("PREFLOOP_TEST_CACHE") or Path.home() / ".cache" / "prefloop")
    out = root / "demo-policy"
    build_demo_policy(out, progress=False)
    return out


def bench_generation(quick: bool) -> dict:
    from labeling.demo_task import demo_prompts
    from labeling.generation import load_sampler, split_temperatures
    from storage.settings import GenerationSettings

    n_prompts, n = (4, 4) if quick else (16, 8)
    temperatures = [1.0, 0.7]
    prompts = [text for text, _ in demo_prompts(0)[:n_prompts]]
    settings = GenerationSettings(max_new_tokens=48, batch_size=n_prompts, device="auto")
    sampler = load_sampler(_policy_path(), settings)
    try:
        sampler.sample(prompts[:1], n=2, temperatures=[1.0], seed=123)  # warm-up

        start = time.perf_counter()
        rows = sampler.sample(prompts, n=n, temperatures=temperatures, seed=0)
        batched_s = time.perf_counter() - start
        batched = [s for row in rows for s in row]

        start = time.perf_counter()
        single = []
        for p_idx, prompt in enumerate(prompts):
            for temperature, k in split_temperatures(n, temperatures):
                for j in range(k):
                    single += sampler.sample(
                        [prompt],
                        n=1,
                        temperatures=[temperature],
                        seed=10_000 * p_idx + j,
                        batch_size=1,
                    )[0]
        single_s = time.perf_counter() - start
    finally:
        sampler.close()
    result = {
        "samples": len(batched),
        "batched_samples_per_s": len(batched) / batched_s,
        "single_samples_per_s": len(single) / single_s,
        "batched_tokens_per_s": sum(s.n_tokens for s in batched) / batched_s,
        "single_tokens_per_s": sum(s.n_tokens for s in single) / single_s,
        "device": sampler.device,
    }
    result["ratio"] = result["batched_samples_per_s"] / result["single_samples_per_s"]
    result["token_ratio"] = result["batched_tokens_per_s"] / result["single_tokens_per_s"]
    return result


def bench_proxy(quick: bool) -> dict:
    from labeling.demo_task import demo_prompts, gold_judge, reference_reply
    from labeling.proxy import Comparison, Embedder, fit_embedded
    from storage.settings import ProxySettings

    prompts = [text for text, _ in demo_prompts(0)]
    rng = random.Random(0)
    train = []
    for prompt in prompts[:100]:
        a = reference_reply(prompt, "random", seed=rng.randrange(10**9))
        b = reference_reply(prompt, "random", seed=rng.randrange(10**9))
        if gold_judge(prompt, a) != gold_judge(prompt, b):
            train.append(
                Comparison(prompt, a, b, float(gold_judge(prompt, a) > gold_judge(prompt, b)))
            )
    embedder = Embedder()
    start = time.perf_counter()
    proxy = fit_embedded(train, ProxySettings(), embedder=embedder)
    fit_s = time.perf_counter() - start
    proxy.version = 1

    n_prompts, n = (8, 4) if quick else (32, 8)
    group_prompts = prompts[100 : 100 + n_prompts]
    groups = [
        [reference_reply(p, "random", seed=rng.randrange(10**9)) for _ in range(n)]
        for p in group_prompts
    ]
    proxy.embedder = Embedder()  # an empty cache: every text is embedded
    start = time.perf_counter()
    proxy.score_groups(group_prompts, groups)
    grouped_s = time.perf_counter() - start
    start = time.perf_counter()
    proxy.score_groups(group_prompts, groups)  # all cached
    cached_s = time.perf_counter() - start

    proxy.embedder = Embedder()
    start = time.perf_counter()
    for p, group in zip(group_prompts, groups, strict=True):
        for response in group:
            proxy.score_groups([p], [[response]])
    single_s = time.perf_counter() - start
    total = n_prompts * n
    return {
        "responses": total,
        "fit_labels": len(train),
        "fit_s": fit_s,
        "grouped_per_s": total / grouped_s,
        "single_per_s": total / single_s,
        "cached_per_s": total / cached_s,
        "ratio": single_s / grouped_s,
    }


def main(quick: bool = False) -> None:
    import torch

    # one thread: on a shared machine, OpenMP threads spinning against other jobs run far slower
    torch.set_num_threads(1)
    g = bench_generation(quick)
    print(
        f"generation ({g['device']}, demo policy, {g['samples']} samples, max 48 new tokens): "
        f"batched {g['batched_samples_per_s']:.1f} samples/s vs one at a time "
        f"{g['single_samples_per_s']:.1f} samples/s -> {g['ratio']:.1f}x "
        f"(tokens/s {g['token_ratio']:.1f}x)"
    )
    p = bench_proxy(quick)
    print(
        f"proxy (embedded, fitted on {p['fit_labels']} labels in {p['fit_s']:.1f}s): "
        f"{p['grouped_per_s']:.0f} responses/s scored in groups vs {p['single_per_s']:.0f}/s "
        f"one at a time -> {p['ratio']:.1f}x; {p['cached_per_s']:.0f}/s with embeddings cached"
    )


if __name__ == "__main__":
    main()
