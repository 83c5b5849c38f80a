"""The vLLM check's reference saved beside a checkpoint (labeling.vllm_engine): read back only for
the weights and the token ids it was computed from. No vLLM needed; the engine's use of it is in
test_vllm.py."""

from __future__ import annotations

import os

from labeling.vllm_engine import (
    CHECK_FILE,
    check_sequences,
    reference_logprobs,
    stored_reference,
    write_check_reference,
)
from tests.training.conftest import tiny_causal_lm


def test_a_saved_reference_serves_its_own_weights_and_sequences_only(tmp_path):
    from transformers import AutoTokenizer

    path = tiny_causal_lm(tmp_path / "policy")
    sequences = check_sequences(AutoTokenizer.from_pretrained(path))
    assert stored_reference(path, sequences) is None  # none saved yet
    write_check_reference(path)
    assert not list(path.glob(".*.tmp"))  # written whole, then renamed
    assert stored_reference(path, sequences) == reference_logprobs(path, sequences)
    # a checkpoint renamed into place keeps it (the training job writes it before the rename)
    moved = path.rename(tmp_path / "v1")
    assert stored_reference(moved, sequences) is not None
    # other token ids (another tokenizer) do not match it
    assert stored_reference(moved, [ids[:-1] for ids in sequences]) is None
    # weights rewritten in place make it stale
    weights = moved / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert stored_reference(moved, sequences) is None
    # an unreadable file counts as none
    (moved / CHECK_FILE).write_text("{not json")
    assert stored_reference(moved, sequences) is None
