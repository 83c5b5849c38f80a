"""The chat demo on SmolLM2-135M-Instruct: generation, one DPO round, and a new data directory's
time to its first pairs, each against a baseline or target measured in the same process.

1. Generation: the chat eval prompts, 4 samples each (1.0 and 0.7), batched the way a round
   samples (the chat demo's batch: 32 prompts, 128 rows decoding together), against one sequence
   at a time on the first 16 of the same samples. tokens/s counts the tokens each reply generated, its end included.
2. DPO: one round of 64 pairs (the shipped seed preferences) with the chat demo's `[dpo]`
   defaults, against the issue's target of 240 s; the round's per-step throughput is printed too.
   Its baseline in the same process: the first 16 of those pairs in float32 (`dpo.bf16 =
   false`), compared in pairs per second.
3. Set-up: `prefloop init --demo chat` in a new data directory (conversion, prompts, seeds, proxy
   fit, first round), then `prefloop serve` until the labeling page answers, against 180 s.

The model: SmolLM2 converted once into $PREFLOOP_TEST_CACHE/smollm2 or ~/.cache/prefloop/smollm2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DPO_TARGET_S = 240.0
SETUP_TARGET_S = 180.0


def _smollm2() -> Path:
    from training.base_model import convert_gguf, smollm2_gguf

    root = Path(os.environ.get("PREFLOOP_TEST_CACHE") or Path.home() / ".cache" / "prefloop")
    out = root / "smollm2"
    convert_gguf(smollm2_gguf(), out)
    return out


def chat_generation_settings(**overrides):
    """The chat demo's batch and reply length, on the CPU; `overrides`: other fields (dtype)."""
    from storage.settings import DEMO_DEFAULTS, GenerationSettings

    defaults = DEMO_DEFAULTS["chat"]["generation"]
    return GenerationSettings(
        max_new_tokens=defaults["max_new_tokens"],
        batch_size=defaults["batch_size"],
        device="cpu",
        **overrides,
    )


def seed_records(n: int) -> list[dict]:
    """The first `n` shipped seed preferences as DPO records (conversational)."""
    from labeling.chat_task import SEED_PREFERENCES

    rows = [json.loads(line) for line in SEED_PREFERENCES.read_text().splitlines()][:n]
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def dpo_round_seconds(model: Path, records: list[dict], **overrides) -> tuple[float, dict]:
    """One DPO round on `records` with the chat demo's `[dpo]` (`overrides` on top): its
    seconds and metrics."""
    from storage.settings import DEMO_DEFAULTS, DPOSettings
    from training.dpo import train

    dpo = DPOSettings(**{**DEMO_DEFAULTS["chat"]["dpo"], **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        metrics = train(
            init_path=str(model),
            ref_path=str(model),
            records=records,
            dpo=dpo,
            output_dir=Path(tmp) / "v1",
        )
        return time.perf_counter() - start, {**metrics, "lora": dpo.use_lora}


def bench_generation(quick: bool) -> dict:
    from labeling.chat_task import chat_prompts
    from labeling.generation import load_sampler

    n_prompts = 16 if quick else 64
    prompts = [text for text, _, split in chat_prompts() if split == "eval"][:n_prompts]
    sampler = load_sampler(_smollm2(), chat_generation_settings())
    try:
        start = time.perf_counter()
        rows = sampler.sample(prompts, n=4, temperatures=[1.0, 0.7], seed=0)
        batched_s = time.perf_counter() - start
        batched = [s for row in rows for s in row]
        # one at a time: the first 4 prompts' 4 samples, each decoded alone
        alone, start = [], time.perf_counter()
        for i, prompt in enumerate(prompts[:4]):
            for temperature in (1.0, 1.0, 0.7, 0.7):
                alone += sampler.sample([prompt], n=1, temperatures=[temperature], seed=i)[0]
        alone_s = time.perf_counter() - start
    finally:
        sampler.close()
    result = {
        "rows": len(batched),
        "batched_tokens_per_s": sum(s.n_tokens for s in batched) / batched_s,
        "one_at_a_time_tokens_per_s": sum(s.n_tokens for s in alone) / alone_s,
        "cut_share": sum(not s.finished for s in batched) / len(batched),
        "mean_tokens": sum(s.n_tokens for s in batched) / len(batched),
    }
    result["ratio"] = result["batched_tokens_per_s"] / result["one_at_a_time_tokens_per_s"]
    return result


def bench_dpo(quick: bool) -> dict:
    records = seed_records(16 if quick else 64)
    model = _smollm2()
    seconds, metrics = dpo_round_seconds(model, records)
    # the baseline: float32 on the first 16 pairs (two steps), seconds per pair
    base_records = records[:16]
    base_seconds, _ = dpo_round_seconds(model, base_records, bf16=False)
    per_pair, base_per_pair = seconds / len(records), base_seconds / len(base_records)
    return {
        "pairs": len(records),
        "seconds": seconds,
        "steps": metrics["steps"],
        "pairs_per_s": len(records) / seconds,
        "vs_target": seconds / DPO_TARGET_S,
        "vs_fp32": base_per_pair / per_pair,
        "lora": metrics["lora"],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_setup(quick: bool) -> dict:
    """A new data directory to a labeling page with queued, proxy-suggested pairs (the packages
    installed, the GGUF conversion included)."""
    prefloop = str(Path(sys.executable).with_name("prefloop"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFLOOP_ADMIN_PASSWORD": "bench-admin-password-1"}
        start = time.perf_counter()
        subprocess.run(
            [prefloop, "init", "--demo", "chat", "--data-dir", tmp],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        init_s = time.perf_counter() - start
        port = _free_port()
        server = subprocess.Popen(
            [prefloop, "serve", "--data-dir", tmp, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError("prefloop serve exited") from None
                    time.sleep(0.2)
            ready_s = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(30)
    return {"init_s": init_s, "ready_s": ready_s, "vs_target": ready_s / SETUP_TARGET_S}


def main(quick: bool = False) -> None:
    gen = bench_generation(quick)
    print(
        f"generation (SmolLM2, {gen['rows']} rows, {gen['mean_tokens']:.0f} tokens on average, "
        f"{gen['cut_share']:.0%} cut): batched {gen['batched_tokens_per_s']:.0f} tokens/s, "
        f"one sequence at a time {gen['one_at_a_time_tokens_per_s']:.0f}: {gen['ratio']:.1f}x (target >= 8x)",
        flush=True,
    )
    dpo = bench_dpo(quick)
    print(
        f"DPO ({'LoRA' if dpo['lora'] else 'full fine-tuning'}, {dpo['pairs']} pairs, "
        f"{dpo['steps']} steps): {dpo['seconds']:.0f}s, {dpo['pairs_per_s']:.2f} pairs/s, "
        f"{dpo['vs_target']:.2f}x the 240 s target; {dpo['vs_fp32']:.2f}x float32's pairs/s "
        "(16 pairs, same process)",
        flush=True,
    )
    setup = bench_setup(quick)
    print(
        f"set-up (init --demo chat, then serve): init {setup['init_s']:.0f}s, server up at "
        f"{setup['ready_s']:.0f}s: {setup['vs_target']:.2f}x the 180 s target",
        flush=True,
    )
