"""Small factories for test data. Each adds rows through storage's own functions and flushes."""

from __future__ import annotations

from itertools import count

from sqlmodel import Session

from storage import crud
from storage.models import (
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PolicyStatus,
    Response,
    Role,
    Split,
    User,
)

_n = count(1)


def make_user(session: Session, *, role: Role = Role.annotator, name: str | None = None) -> User:
    return crud.create_user(
        session=session, name=name or f"user{next(_n)}", role=role, password_hash=None
    )


def make_prompts(session: Session, n: int, *, split: Split = Split.train) -> list[int]:
    texts = [f"prompt {next(_n)}" for _ in range(n)]
    crud.add_prompts(session=session, prompts=[crud.PromptIn(text=t, split=split) for t in texts])
    from sqlmodel import select

    from storage.models import Prompt

    return list(session.exec(select(Prompt.id).where(Prompt.text.in_(texts))))


def make_policy(session: Session, *, version: int = 0, deployed: bool = True):
    status = PolicyStatus.deployed if deployed else PolicyStatus.candidate
    return crud.create_policy(
        session=session, version=version, path=f"/models/v{version}", status=status
    )


def make_pairs(session: Session, n: int, **pair_fields) -> list[Pair]:
    """n pairs, each on its own prompt with two fresh responses."""
    pairs = []
    for prompt_id in make_prompts(session, n):
        a = Response(prompt_id=prompt_id, text=f"reply {next(_n)}")
        b = Response(prompt_id=prompt_id, text=f"reply {next(_n)}")
        session.add_all([a, b])
        session.flush()
        pair = Pair(prompt_id=prompt_id, response_a_id=a.id, response_b_id=b.id, **pair_fields)
        session.add(pair)
        pairs.append(pair)
    session.flush()
    return pairs


def label_pair(session: Session, pair: Pair, *choices: str, users, reasons=()) -> None:
    """Human labels on `pair`, one per user in order (a reason each where `reasons` has one),
    and the pair done."""
    for n, (user, choice) in enumerate(zip(users, choices, strict=False)):
        reason = reasons[n] if n < len(reasons) else None
        session.add(
            Label(
                pair_id=pair.id,
                user_id=user.id,
                source=LabelSource.human,
                choice=Choice(choice),
                reason=reason,
            )
        )
    pair.n_labels, pair.status = len(choices), PairStatus.done
    session.add(pair)
    session.flush()


def refusing_system_turns(policy_dir, dest):
    """A copy of the policy at `policy_dir` in `dest` whose chat template refuses a system turn,
    as Gemma's does; returns `dest`."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(policy_dir, dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}\n{% endfor %}"
    )
    tokenizer.save_pretrained(dest)
    return dest
