"""`score_only_completions`: TRL's fused LM head scores only the labelled positions on a CPU,
with the same log-probabilities it computed over the whole padded batch."""

from __future__ import annotations

import pytest

from labeling.demo_task import demo_prompts, reference_reply

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def first_step(policy_dir, tmp_path, *, compact: bool, monkeypatch) -> tuple[dict, list[int]]:
    """Step 1's logged metrics (computed before any update) and the number of positions each
    call of the fused head scored."""
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer
    from trl.kernels import ChunkedLogProbFunction as head

    from storage.settings import DPOSettings
    from training.dpo import dpo_config

    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: compact)
    scored: list[int] = []

    class Counting(head):
        @staticmethod
        def forward(ctx, hidden, *args):
            scored.append(hidden.shape[0])
            return head.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    prompts = [text for text, _ in demo_prompts()[:8]]
    records = [
        {"prompt": p, "chosen": reference_reply(p), "rejected": reference_reply(p, "worst")}
        for p in prompts
    ]
    dpo = DPOSettings(per_device_train_batch_size=8, bf16=False, trl_args={"max_steps": 1})
    trainer = DPOTrainer(
        model=str(policy_dir),
        args=dpo_config(dpo, tmp_path / ("compact" if compact else "full")),
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(policy_dir),
    )
    trainer.train()
    return trainer.state.log_history[0], scored


def test_completions_only_give_the_same_log_probs_from_fewer_positions(
    demo_policy_dir, tmp_path, monkeypatch
):
    full, full_scored = first_step(
        demo_policy_dir, tmp_path, compact=False, monkeypatch=monkeypatch
    )
    compact, compact_scored = first_step(
        demo_policy_dir, tmp_path, compact=True, monkeypatch=monkeypatch
    )
    for key in ("logps/chosen", "logps/rejected", "loss"):
        assert compact[key] == pytest.approx(full[key], rel=1e-4), key
    # the prompt and the padding are not scored any more
    assert compact_scored and len(compact_scored) == len(full_scored)
    assert all(c < f for c, f in zip(compact_scored, full_scored, strict=True))


def test_the_pinned_trl_gets_the_completions_only_head():
    import trl
    import trl.trainer.utils as trl_utils

    from training.dpo import score_only_completions

    score_only_completions()
    assert trl.__version__ == "1.16.0"  # the version whose head this was checked against
    assert trl_utils._use_triton("cpu") is True
