"""All of prefloop's tables, in one module.

States and choices are string enums stored as VARCHAR with a CHECK constraint, so SQLite and
PostgreSQL hold the same schema and an unknown value is refused by the database itself.
Timestamps are timezone-aware UTC (`utcnow`); SQLModel's UTCDateTime refuses naive ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def enum_column(enum: type[StrEnum], **kwargs: Any) -> Any:
    """A VARCHAR + CHECK column for `enum`, storing its values (not its member names)."""
    return Field(
        sa_type=sa.Enum(
            enum,
            native_enum=False,
            create_constraint=True,
            length=16,
            name=f"ck_{enum.__name__.lower()}",
            values_callable=lambda e: [m.value for m in e],
            validate_strings=True,
        ),
        **kwargs,
    )


def json_column(**kwargs: Any) -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False), **kwargs)


class Role(StrEnum):
    annotator = "annotator"
    admin = "admin"


class Split(StrEnum):
    train = "train"
    eval = "eval"


class PolicyStatus(StrEnum):
    candidate = "candidate"
    deployed = "deployed"
    retired = "retired"
    rejected = "rejected"


class IterationState(StrEnum):
    generating = "generating"
    labeling = "labeling"
    training = "training"
    evaluating = "evaluating"
    deployed = "deployed"
    rejected = "rejected"
    failed = "failed"


class PairStrategy(StrEnum):
    max_min = "max_min"
    max_random = "max_random"
    random = "random"
    uncertain = "uncertain"
    explore = "explore"
    seed = "seed"  # imported preference data (iteration 0)
    eval = "eval"  # one reply of each of two policy versions on a held-out prompt
    gold = "gold"  # imported with its known answer (`prefloop gold import`)
    edit = "edit"  # an annotator's rewrite of a response, preferred over it (storage/rewrites.py)


class Route(StrEnum):
    human = "human"  # the proxy was unsure, or routing is off
    proxy = "proxy"  # labeled by the proxy alone
    audit = "audit"  # the proxy was confident, but humans label it to measure the proxy
    # An evaluation pair: humans vote between two policy versions, blind. The votes rate the
    # versions (training/ratings.py) and are never preference data (DPO, the proxy, the export).
    eval = "eval"
    # A gold pair: its answer is known (the `gold` table); every annotator may get it once, and
    # their labels on it measure them (storage/gold.py). Never preference data either.
    gold = "gold"


# The routes whose labels are no preference data: DPO, the proxy's refit, the export, the
# quality figures, the quota and the label counts leave them out.
NOT_PREFERENCE_ROUTES = (Route.eval, Route.gold)


class PairStatus(StrEnum):
    queued = "queued"  # waiting for human labels
    done = "done"  # has all the labels it needs (human overlap reached, or the proxy's)
    discarded = "discarded"  # withdrawn by an admin; kept for history


class LabelSource(StrEnum):
    human = "human"
    proxy = "proxy"
    seed = "seed"  # imported preference datasets
    # An admin's decision on a pair whose labels disagree (storage/review.py): it alone decides
    # the pair for training and export. Its user is the admin.
    review = "review"


class Choice(StrEnum):
    a = "a"
    b = "b"
    tie = "tie"
    both_bad = "both_bad"


class AssignmentStatus(StrEnum):
    active = "active"
    submitted = "submitted"
    skipped = "skipped"
    expired = "expired"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ErrorKind(StrEnum):
    """Whether a failed job can succeed on a retry: the one who saw it fail says."""

    transient = "transient"  # killed, a signal, out of memory, no heartbeat: retried
    permanent = "permanent"  # the job's own code raised: the same inputs raise again


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    role: Role = enum_column(Role, default=Role.annotator)
    password_hash: str | None = Field(default=None, max_length=255)
    token_hash: str | None = Field(default=None, max_length=128, unique=True)
    active: bool = Field(default=True)
    # Gold accuracy that may flag this annotator counts from here (an admin lifted the flag);
    # None: from the first gold label.
    gold_since: datetime | None = None
    # The newest of their labels whose pairs went back to the queue when they were flagged
    # (storage/gold.py, `requeue_flagged`): later ones go back at the next check.
    gold_requeued_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Prompt(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    text: str = Field(sa_type=sa.Text)
    # Chat prompts keep their messages ([{"role", "content"}]); `text` is then the last user turn.
    messages: list[dict[str, str]] | None = Field(default=None, sa_column=Column(JSON))
    # sha256 of the canonical text or messages: the deduplication key.
    content_hash: str = Field(max_length=64, unique=True, index=True)
    source: str = Field(default="", max_length=255)
    split: Split = enum_column(Split, default=Split.train, index=True)
    active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)


class ProxyVersion(SQLModel, table=True):
    __tablename__ = "proxy_version"

    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(unique=True)
    kind: str = Field(max_length=32)  # embedded | reward_model | judge
    path: str | None = Field(default=None, max_length=1024)
    n_labels: int = Field(default=0)
    metrics: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)


class Policy(SQLModel, table=True):
    __table_args__ = (
        # At most one deployed policy, whatever two processes try at once.
        sa.Index(
            "uq_policy_deployed",
            "status",
            unique=True,
            sqlite_where=sa.text("status = 'deployed'"),
            postgresql_where=sa.text("status = 'deployed'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(unique=True, index=True)
    path: str = Field(max_length=1024)
    parent_id: int | None = Field(default=None, foreign_key="policy.id")
    iteration_k: int | None = Field(default=None)
    status: PolicyStatus = enum_column(PolicyStatus, default=PolicyStatus.candidate, index=True)
    metrics: dict[str, Any] = json_column()
    config: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)
    deployed_at: datetime | None = None


class Iteration(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    k: int = Field(unique=True, index=True)
    state: IterationState = enum_column(IterationState, default=IterationState.generating)
    policy_in_id: int | None = Field(default=None, foreign_key="policy.id")
    policy_out_id: int | None = Field(default=None, foreign_key="policy.id")
    human_quota: int = Field(default=0)  # human labels that trigger training
    human_budget: int = Field(default=0)  # most pairs routed to humans this iteration
    metrics: dict[str, Any] = json_column()
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow)
    labeling_at: datetime | None = None
    training_at: datetime | None = None
    evaluating_at: datetime | None = None
    finished_at: datetime | None = None


class Response(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    policy_id: int | None = Field(default=None, foreign_key="policy.id", index=True)
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id", index=True)
    text: str = Field(sa_type=sa.Text)
    # temperature, top_p, max_new_tokens, seed, backend: what made this text
    sampling: dict[str, Any] = json_column()
    proxy_reward: float | None = None
    proxy_version: int | None = None
    # A human edit: the response it rewrites (its `sampling` says {"source": "human_edit"}).
    edited_from_id: int | None = Field(default=None, foreign_key="response.id")
    created_at: datetime = Field(default_factory=utcnow)


# Pairs waiting for human labels (Route.human, Route.audit), as literal SQL: a partial index is used
# only for a query whose WHERE repeats its condition with the same literals.
QUEUED_FOR_HUMANS_SQL = "status = 'queued' AND route IN ('human', 'audit')"
# Evaluation pairs waiting for votes (Route.eval): a queue of their own, beside the one above.
QUEUED_FOR_EVAL_SQL = "status = 'queued' AND route = 'eval'"
# Gold pairs (Route.gold): a third queue. They stay queued: every annotator may get each once.
QUEUED_GOLD_SQL = "status = 'queued' AND route = 'gold'"
# A gold pair's overlap: no cap on its labels, so it is never done (`queue._count_label`).
GOLD_OVERLAP = 1_000_000


class Pair(SQLModel, table=True):
    __table_args__ = (
        sa.CheckConstraint("response_a_id <> response_b_id", name="ck_pair_distinct"),
        sa.UniqueConstraint("response_a_id", "response_b_id", name="uq_pair_responses"),
        sa.Index("ix_pair_queue", "status", "route", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    response_a_id: int = Field(foreign_key="response.id")
    response_b_id: int = Field(foreign_key="response.id")
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id", index=True)
    strategy: PairStrategy = enum_column(PairStrategy, default=PairStrategy.max_min)
    route: Route = enum_column(Route, default=Route.human)
    status: PairStatus = enum_column(PairStatus, default=PairStatus.queued)
    overlap: int = Field(default=1, ge=1)  # human labels wanted
    n_labels: int = Field(default=0)  # human labels received
    created_at: datetime = Field(default_factory=utcnow)


# The annotation queue's claim order (storage/queue.py), over the pairs humans may get only: a claim
# walks it and stops at the first free pair, whatever the queue's size; `overlap` rides along so
# counting what is left never reads the table.
sa.Index(
    "ix_pair_claim",
    Pair.__table__.c.n_labels.desc(),
    Pair.__table__.c.id,
    Pair.__table__.c.overlap,
    sqlite_where=sa.text(QUEUED_FOR_HUMANS_SQL),
    postgresql_where=sa.text(QUEUED_FOR_HUMANS_SQL),
)
# The same claim order over the evaluation pairs waiting for votes, and over the gold pairs.
sa.Index(
    "ix_pair_eval_claim",
    Pair.__table__.c.n_labels.desc(),
    Pair.__table__.c.id,
    Pair.__table__.c.overlap,
    sqlite_where=sa.text(QUEUED_FOR_EVAL_SQL),
    postgresql_where=sa.text(QUEUED_FOR_EVAL_SQL),
)
sa.Index(
    "ix_pair_gold_claim",
    Pair.__table__.c.n_labels.desc(),
    Pair.__table__.c.id,
    Pair.__table__.c.overlap,
    sqlite_where=sa.text(QUEUED_GOLD_SQL),
    postgresql_where=sa.text(QUEUED_GOLD_SQL),
)


class GoldSource(StrEnum):
    imported = "imported"  # `prefloop gold import`, POST /gold
    marked = "marked"  # a pair an admin marked as gold


class Gold(SQLModel, table=True):
    """A gold pair's known answer. Labels made on the pair since it became gold (`created_at`)
    are checked against it: each annotator's gold accuracy (storage/gold.py)."""

    pair_id: int = Field(foreign_key="pair.id", primary_key=True)
    answer: Choice = enum_column(Choice)
    source: GoldSource = enum_column(GoldSource, default=GoldSource.imported)
    # A marked pair's route, status and overlap before, put back when the mark is removed.
    former_route: Route | None = enum_column(Route, default=None)
    former_status: PairStatus | None = enum_column(PairStatus, default=None)
    former_overlap: int | None = None
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)


class Suggestion(SQLModel, table=True):
    """The proxy's opinion on a pair. Never a label: labels are what someone decided."""

    __table_args__ = (sa.UniqueConstraint("pair_id", "agent", name="uq_suggestion_agent"),)

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="pair.id", index=True)
    p_a: float = Field(ge=0.0, le=1.0)  # P(a ≻ b)
    uncertainty: float = Field(default=0.0, ge=0.0)
    reward_a: float | None = None
    reward_b: float | None = None
    agent: str = Field(max_length=64)  # e.g. "proxy:v3"
    created_at: datetime = Field(default_factory=utcnow)


class Label(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("pair_id", "user_id", name="uq_label_pair_user"),
        # user_id is NULL for proxy and seed labels: at most one such label per pair and source.
        sa.Index(
            "uq_label_pair_machine",
            "pair_id",
            "source",
            unique=True,
            sqlite_where=sa.text("user_id IS NULL"),
            postgresql_where=sa.text("user_id IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="pair.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    source: LabelSource = enum_column(LabelSource, default=LabelSource.human)
    choice: Choice = enum_column(Choice)
    # True when the annotator saw response b on the left: the choice above is already
    # translated back to the pair's a/b.
    swapped: bool = Field(default=False)
    seconds: float | None = Field(default=None, ge=0.0)
    reason: str | None = Field(default=None, max_length=2000)
    # The guidelines' version when the label was made (storage/guidelines.py); None: none yet.
    guideline_version: int | None = None
    # Judgments on `labeling.criteria` beside the overall choice: {criterion: "a" | "b" | "tie"},
    # translated back to the pair's a/b like `choice`; None: none given.
    criteria: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Guideline(SQLModel, table=True):
    """One version of the labeling guidelines (Markdown, written by an admin); the newest is the
    one in force. Versions are kept, never edited."""

    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(unique=True)
    text: str = Field(sa_type=sa.Text)
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)


def _live_leases_index(name: str, by: str) -> sa.Index:
    """The active leases (Assignment.status == active) by `by` and expiry."""
    active = sa.text("status = 'active'")
    return sa.Index(name, by, "expires_at", sqlite_where=active, postgresql_where=active)


class Assignment(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("pair_id", "user_id", name="uq_assignment_pair_user"),
        # The live leases (a handful) without scanning every claim ever made: a pair's, and a
        # user's (their lapsed ones are marked expired at every claim; by user_id alone that
        # update walked every claim the user ever made, a cost growing with their history).
        _live_leases_index("ix_assignment_live", "pair_id"),
        _live_leases_index("ix_assignment_user_live", "user_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="pair.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    status: AssignmentStatus = enum_column(AssignmentStatus, default=AssignmentStatus.active)
    swapped: bool = Field(default=False)  # the A/B order this user was shown
    claimed_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32, index=True)  # generate, train, evaluate, refit_proxy, ...
    status: JobStatus = enum_column(JobStatus, default=JobStatus.queued, index=True)
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id")
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    heartbeat: datetime | None = None
    pid: int | None = None
    attempts: int = Field(default=0)
    log_path: str | None = Field(default=None, max_length=1024)
    params: dict[str, Any] = json_column()
    result: dict[str, Any] = json_column()
    error: str | None = Field(default=None, sa_type=sa.Text)
    error_kind: ErrorKind | None = enum_column(ErrorKind, default=None)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Setting(SQLModel, table=True):
    """A loop setting changed by an admin at run time; layered over prefloop.toml."""

    key: str = Field(primary_key=True, max_length=128)
    value: Any = Field(sa_column=Column(JSON, nullable=True))
    updated_by: int | None = Field(default=None, foreign_key="user.id")
    updated_at: datetime = Field(default_factory=utcnow)


class Audit(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    action: str = Field(max_length=64, index=True)
    detail: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)
