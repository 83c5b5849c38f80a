"""The JSON API under /api/v1, for labeling vendors and scripts: the same queue and export
functions as the browser views.

Every call carries a user's API token (`Authorization: Bearer pfl_...`, issued with `prefloop
users token NAME`); the database holds only its sha256. No token or an unknown one: 401; a
disabled user: 403; an annotator on an admin route: 403, checked in the handler itself. Unknown
tokens count as failed sign-ins of the client's address (`app.throttle`, the server's
`app.state.throttle`): past a few, 429 with Retry-After.
Every answer, errors included, carries `X-Content-Type-Options: nosniff`: responses are model
output, and no browser may sniff one into HTML. The server's `create_app` includes `router`; the
runtime comes from `app.state.runtime`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import hash_token
from app.throttle import SignInThrottle, client_address, sign_in_failed
from storage import crud, queue
from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Role, Split, User
from storage.runtime import Runtime
from storage.settings import LabelingSettings


class NoSniffRoute(APIRoute):
    """A route whose every answer carries `X-Content-Type-Options: nosniff`. Errors are turned
    into responses here (FastAPI's own default handler for HTTP errors, `invalid_request` for
    validation errors), so that they carry it too."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_nosniff(request: Request) -> Response:
            try:
                response = await handler(request)
            except StarletteHTTPException as exc:
                response = await http_exception_handler(request, exc)
            except RequestValidationError as exc:
                response = invalid_request(exc)
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

        return with_nosniff


# JSON has no NaN or Infinity, but Python's parser reads them (and 1e999 as Infinity): a body
# holding one fails validation, and the error, which echoes the input, is written back as text.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[str(value)]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def invalid_request(exc: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field (`loc`), whatever the input was. FastAPI's default handler
    answers 500 when the input holds a NaN or an Infinity: its JSON encoder refuses them."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


router = APIRouter(prefix="/api/v1", tags=["api"], route_class=NoSniffRoute)
_bearer = HTTPBearer(auto_error=False, description="An API token: `prefloop users token NAME`.")

MAX_ID = 2**31 - 1  # ids are INTEGER columns; a larger one cannot exist and PostgreSQL refuses it
MAX_K = 2**31 - 1


class ApiError(BaseModel):
    detail: str


class BodyIn(BaseModel):
    """A request body: a field it does not know is refused by name (422, `extra_forbidden` at
    ["body", field]), where a misspelled "reasons" was dropped without a word."""

    model_config = ConfigDict(extra="forbid")


ERRORS = {
    401: {"model": ApiError, "description": "No token, or an unknown one."},
    403: {"model": ApiError, "description": "Disabled user, or not allowed for this role."},
    429: {
        "model": ApiError,
        "description": "Too many unknown tokens from your address: wait Retry-After seconds.",
    },
}
NO_CLAIM = {"model": ApiError, "description": "You hold no claim on this pair."}


# who is calling


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


T = TypeVar("T")


async def on_api_threads(request: Request, work: Callable[[], T]) -> T:
    """`work` (the token check, a labeling call's transaction) on this process's few API
    threads (`server.api_threads`) rather than the shared pool of 40. Fifty clients on 40
    threads kept some 25 transactions going at once in a process, each waiting for the GIL after
    every round trip to the database: two threads labeled 1.1x (SQLite) to 1.25x (PostgreSQL)
    the submits/s (README, "The web app")."""
    state = request.app.state
    limiter = getattr(state, "api_limiter", None)
    if limiter is None:  # made in the event loop, on the first call; nothing awaits in between
        limiter = state.api_limiter = anyio.CapacityLimiter(
            get_runtime(request).settings.server.api_threads
        )
    return await anyio.to_thread.run_sync(work, limiter=limiter)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "an API token is required", {"WWW-Authenticate": "Bearer"})
    throttle: SignInThrottle = request.app.state.throttle
    address = client_address(request)
    if wait := throttle.retry_after(address=address):
        raise HTTPException(
            429, f"too many failed sign-ins: try again in {wait} s", {"Retry-After": str(wait)}
        )
    rt = get_runtime(request)

    def check() -> User:
        with transaction(rt.engine, readonly=True) as session:
            user = crud.get_user_by_token_hash(
                session=session, token_hash=hash_token(credentials.credentials)
            )
        if user is None:
            sign_in_failed(rt, throttle, via="api", address=address)
            raise HTTPException(401, "invalid API token", {"WWW-Authenticate": "Bearer"})
        if not user.active:
            raise HTTPException(403, "this user is disabled")
        return user

    return await on_api_threads(request, check)


CurrentUser = Annotated[User, Depends(current_user)]


def require_admin(user: User) -> None:
    if user.role != Role.admin:
        raise HTTPException(403, "admins only")


# shapes


class Suggestion(BaseModel):
    p_left: float = Field(description="The proxy's P(left response is better).")
    uncertainty: float
    agent: str


class PairOut(BaseModel):
    pair_id: int
    prompt: str
    prompt_messages: list[dict[str, str]] | None
    left: str
    right: str
    left_cut: bool = Field(
        description="The left response stopped at the token limit (max_new_tokens) instead of "
        "finishing; false where the response has no sampling details (seed, imported)."
    )
    right_cut: bool = Field(description="The same for the right response.")
    suggestion: Suggestion | None = Field(
        description="Only while the labeling settings show suggestions before the vote."
    )
    criteria: list[str] = Field(
        default_factory=list,
        description="The criteria to judge beside the overall choice (labeling.criteria), each "
        "left, right or tie in the label's `criteria`.",
    )
    expires_at: datetime = Field(description="The claim lapses then; submit before it.")


class NextPairOut(BaseModel):
    pair: PairOut | None = Field(description="None: nothing left for you to label.")


def _without_nul(value: str | None) -> str | None:
    """A text field's check in the request models: NUL characters are refused."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class RewriteIn(BodyIn):
    side: Literal["left", "right"] = Field(description="The response you rewrote, as shown.")
    text: str = Field(min_length=1, max_length=100_000, description="Your better version.")

    @field_validator("text")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return _without_nul(value)


class LabelIn(BodyIn):
    choice: Literal["left", "right", "tie", "both_bad"] = Field(
        description="In the order you were shown the pair."
    )
    seconds: float | None = Field(None, ge=0.0, le=86_400.0, allow_inf_nan=False)
    reason: str | None = Field(None, max_length=queue.MAX_REASON_CHARS)
    criteria: dict[str, Literal["left", "right", "tie"]] | None = Field(
        None,
        max_length=16,
        description="{criterion: left | right | tie} for criteria of the pair's `criteria`, in "
        "the order shown; any may be left out.",
    )
    rewrite: RewriteIn | None = Field(
        None,
        description="Your edit of one response into a better one: stored as a new response and "
        "a pair preferring it over the original (exported and trained on, strategy 'edit').",
    )

    @field_validator("reason")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _without_nul(value)


class LabelOut(BaseModel):
    pair_id: int
    choice: str = Field(description="Stored as the pair's a / b / tie / both_bad.")
    guideline_version: int | None = Field(
        None, description="The guidelines' version in force when the label was made."
    )
    criteria: dict[str, str] | None = Field(
        None, description="Stored as the pair's a / b / tie per criterion."
    )
    next: PairOut | None = Field(
        None,
        description="With `?next=true`: your next pair, claimed in the same transaction (None: "
        "nothing left, or labeling is paused).",
    )


class SkipOut(BaseModel):
    pair_id: int
    skipped: bool = True


class StatusOut(BaseModel):
    user: str
    role: str
    labeled_today: int
    queue_left: int
    paused: bool
    iteration: dict | None
    deployed_policy: int | None


class IterationOut(BaseModel):
    k: int
    state: str
    policy_in: int | None
    policy_out: int | None
    human_quota: int
    labels: dict[str, int]
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def _suggestion(claim_suggestion) -> Suggestion | None:
    if claim_suggestion is None:
        return None
    return Suggestion(
        p_left=claim_suggestion.p_left,
        uncertainty=claim_suggestion.uncertainty,
        agent=claim_suggestion.agent,
    )


def _pair_out(claim: queue.Claim, labeling: LabelingSettings) -> PairOut:
    shown = labeling.suggestion_mode == "shown"
    return PairOut(
        pair_id=claim.pair_id,
        prompt=claim.prompt,
        prompt_messages=claim.prompt_messages,
        left=claim.left,
        right=claim.right,
        left_cut=claim.left_cut,
        right_cut=claim.right_cut,
        suggestion=_suggestion(claim.suggestion) if shown else None,
        criteria=list(labeling.criteria),
        expires_at=claim.expires_at,
    )


def _queue_errors(exc: Exception) -> HTTPException:
    if isinstance(exc, queue.NotAssigned):
        return HTTPException(404, str(exc))
    if isinstance(exc, crud.Conflict):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


@router.get("/openapi.json", include_in_schema=False)
def openapi_spec(request: Request) -> JSONResponse:
    """This API's OpenAPI spec, public (the app's own /openapi.json sits behind the login)."""
    spec = request.app.openapi()
    paths = {path: ops for path, ops in spec["paths"].items() if path.startswith(router.prefix)}
    return JSONResponse({**spec, "paths": paths})


# annotators and admins


@router.get(
    "/pairs/next",
    response_model=NextPairOut,
    responses={
        **ERRORS,
        409: {"model": ApiError, "description": "Labeling is paused by an admin."},
    },
)
async def next_pair(request: Request, user: CurrentUser) -> NextPairOut:
    """Claim the next pair to label (or the one you hold). Responses are model output: show
    them as plain text."""
    rt = get_runtime(request)

    def claim_next() -> NextPairOut:
        with transaction(rt.engine) as session:
            settings = rt.effective_settings(session)
            labeling = settings.labeling
            if labeling.paused:
                raise HTTPException(409, "labeling is paused by an admin")
            claim = queue.claim_for_labeling(
                session=session,
                user_id=user.id,
                labeling=labeling,
                eval_share=settings.eval.human_share,
            )
        return NextPairOut(pair=None if claim is None else _pair_out(claim, labeling))

    return await on_api_threads(request, claim_next)


@router.post(
    "/pairs/{pair_id}/label",
    response_model=LabelOut,
    responses={
        **ERRORS,
        404: NO_CLAIM,
        409: {
            "model": ApiError,
            "description": "You skipped the pair, it was withdrawn, or your claim lapsed and "
            "others took it.",
        },
    },
)
async def label_pair(
    request: Request,
    user: CurrentUser,
    body: LabelIn,
    pair_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    next: Annotated[
        bool, Query(description="Also claim your next pair (one round trip, one transaction).")
    ] = False,
) -> LabelOut:
    """Label a pair you claimed. Submitting twice returns the first label."""
    rt = get_runtime(request)

    def label_and_claim() -> LabelOut:
        try:
            with transaction(rt.engine) as session:
                settings = rt.effective_settings(session)
                labeling = settings.labeling if next else None
                label, claim = queue.label_and_claim_next(
                    session=session,
                    user_id=user.id,
                    pair_id=pair_id,
                    shown_choice=body.choice,
                    labeling=labeling,
                    eval_share=settings.eval.human_share,
                    seconds=body.seconds,
                    reason=body.reason,
                    criteria=body.criteria,
                    allowed_criteria=settings.labeling.criteria,
                    rewrite=None
                    if body.rewrite is None
                    else (body.rewrite.side, body.rewrite.text),
                )
        except (crud.NotFound, crud.Conflict, ValueError) as exc:
            raise _queue_errors(exc) from None
        following = None if claim is None else _pair_out(claim, labeling)
        return LabelOut(
            pair_id=pair_id,
            choice=str(label.choice),
            guideline_version=label.guideline_version,
            criteria=label.criteria,
            next=following,
        )

    return await on_api_threads(request, label_and_claim)


@router.post(
    "/pairs/{pair_id}/skip",
    response_model=SkipOut,
    responses={
        **ERRORS,
        404: NO_CLAIM,
        409: {"model": ApiError, "description": "You labeled the pair already."},
    },
)
async def skip(
    request: Request, user: CurrentUser, pair_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> SkipOut:
    """Pass on a pair you claimed: it goes to someone else, never back to you."""
    rt = get_runtime(request)

    def skip_it() -> SkipOut:
        try:
            with transaction(rt.engine) as session:
                queue.skip_pair(session=session, user_id=user.id, pair_id=pair_id)
        except (crud.NotFound, crud.Conflict, ValueError) as exc:
            raise _queue_errors(exc) from None
        return SkipOut(pair_id=pair_id)

    return await on_api_threads(request, skip_it)


@router.get("/status", response_model=StatusOut, responses=ERRORS)
def status(request: Request, user: CurrentUser) -> StatusOut:
    """Your labels today, what is left for you, the loop's iteration and deployed policy."""
    rt = get_runtime(request)
    with transaction(rt.engine, readonly=True) as session:
        paused = rt.effective_settings(session).labeling.paused
        stats = queue.queue_stats(session=session, user_id=user.id)
        iteration = crud.current_iteration(session=session)
        policy = crud.deployed_policy(session=session)
    return StatusOut(
        user=user.name,
        role=str(user.role),
        labeled_today=stats["labeled_today"],
        queue_left=stats["queue_left"],
        paused=paused,
        iteration={"k": iteration.k, "state": str(iteration.state)} if iteration else None,
        deployed_policy=policy.version if policy else None,
    )


# admins


@router.get("/iterations", response_model=list[IterationOut], responses=ERRORS)
def iterations(request: Request, user: CurrentUser) -> list[IterationOut]:
    """Every iteration with its state, policies and labels per source (admins)."""
    require_admin(user)
    rt = get_runtime(request)
    with transaction(rt.engine, readonly=True) as session:
        versions = {p.id: p.version for p in crud.list_policies(session=session)}
        return [
            IterationOut(
                k=it.k,
                state=str(it.state),
                policy_in=versions.get(it.policy_in_id),
                policy_out=versions.get(it.policy_out_id),
                human_quota=it.human_quota,
                labels=crud.label_counts(session=session, iteration_id=it.id),
                error=it.error,
                created_at=it.created_at,
                finished_at=it.finished_at,
            )
            for it in crud.list_iterations(session=session)
        ]


@router.get(
    "/export",
    response_class=FileResponse,
    responses={
        **ERRORS,
        200: {"description": "The dataset file (an hf export comes zipped)."},
        404: {"model": ApiError, "description": "No decided pair matches the filters."},
    },
)
def export(
    request: Request,
    user: CurrentUser,
    format: Literal["jsonl", "parquet", "hf"] = "parquet",
    layout: Literal["standard", "conversational"] = "standard",
    iteration: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_K)]] | None,
        Query(description="Iteration k (repeatable)."),
    ] = None,
    source: Annotated[
        list[Literal["human", "proxy", "seed"]] | None,
        Query(description="Label sources (repeatable); default all."),
    ] = None,
    min_agreement: Annotated[float, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0,
    annotator: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]] | None,
        Query(description="Count only these users (repeatable)."),
    ] = None,
    split: Split | None = None,
    include_flagged: Annotated[
        bool,
        Query(
            description="Count the labels of annotators flagged by their gold accuracy too "
            "(left out by default while labeling.gold_filter is on)."
        ),
    ] = False,
    criterion: Annotated[
        str | None,
        Query(
            max_length=32,
            description="Decide each pair by its labels' judgments on this criterion of "
            "labeling.criteria (default: the overall choice).",
        ),
    ] = None,
) -> FileResponse:
    """Download the decided preferences as a dataset file for TRL's DPOTrainer (admins)."""
    from labeling.export import MEDIA_TYPES, ExportError, ExportFilters, export_file

    require_admin(user)
    rt = get_runtime(request)
    labeling = rt.effective_settings().labeling
    if criterion is not None and criterion not in labeling.criteria:
        raise HTTPException(422, f"criterion {criterion!r}: not among {labeling.criteria}")
    filters = ExportFilters(
        iterations=iteration or None,
        sources=tuple(source) if source else ("human", "proxy", "seed"),
        min_agreement=min_agreement,
        annotators=annotator or None,
        split=split,
        gold=None if include_flagged else GoldRule.filtering(labeling),
        criterion=criterion,
    )
    try:
        result = export_file(
            engine=rt.engine,
            format=format,
            layout=layout,
            filters=filters,
            criteria=labeling.criteria,
        )
    except ExportError as exc:
        raise HTTPException(404, str(exc)) from None
    with transaction(rt.engine) as session:
        crud.record_audit(
            session=session,
            user_id=user.id,
            action="export",
            detail={"via": "api", "format": format, "rows": result.rows, **filters.as_dict()},
        )
    return FileResponse(
        result.path,
        media_type=MEDIA_TYPES[result.format],
        filename=f"prefloop-{result.layout}{result.path.suffix}",
        headers={"X-Prefloop-Rows": str(result.rows)},
        background=BackgroundTask(shutil.rmtree, result.path.parent, ignore_errors=True),
    )


# human evaluation (admins)


class RatingOut(BaseModel):
    version: int
    rating: float = Field(description="Bradley-Terry rating on an Elo-like scale, pi_0 at 1000.")
    lower: float = Field(description="The 95% bootstrap interval's lower end.")
    upper: float
    votes: int
    win_rate_vs_anchor: float | None = Field(
        description="Its own head-to-head win-rate against pi_0 (ties half); null if never met."
    )
    votes_vs_anchor: int


class HeadToHeadOut(BaseModel):
    a: int
    b: int
    votes: int
    a_wins: int
    b_wins: int
    ties: int = Field(description="Ties and both-bad votes (half a win each way).")
    win_rate: float = Field(description="a's win-rate over b, ties half.")
    lower: float
    upper: float


class LeaderboardOut(BaseModel):
    anchor: int | None = Field(description="The version fixed at 1000 (pi_0).")
    votes: int
    resamples: int
    ratings: list[RatingOut] = Field(description="Best first.")
    head_to_head: list[HeadToHeadOut] = Field(description="Every two versions that met.")


class EvalPairsIn(BodyIn):
    a: int = Field(ge=0, le=MAX_K, description="A policy version.")
    b: int = Field(ge=0, le=MAX_K, description="The version to compare it with.")
    prompts: int | None = Field(
        None, ge=1, le=100_000, description="Held-out prompts (default: eval.human_prompts)."
    )


class JobOut(BaseModel):
    job_id: int


@router.get("/leaderboard", response_model=LeaderboardOut, responses=ERRORS)
def leaderboard(request: Request, user: CurrentUser) -> LeaderboardOut:
    """The policy versions rated by the human evaluation votes (admins)."""
    from training.human_eval import human_leaderboard

    require_admin(user)
    rt = get_runtime(request)
    board = human_leaderboard(engine=rt.engine, settings=rt.effective_settings())
    return LeaderboardOut(
        anchor=board.anchor,
        votes=board.votes,
        resamples=board.resamples,
        ratings=[RatingOut(**vars(r)) for r in board.ratings],
        head_to_head=[HeadToHeadOut(**vars(h)) for h in board.head_to_head],
    )


@router.post(
    "/eval/pairs",
    response_model=JobOut,
    status_code=202,
    responses={
        **ERRORS,
        404: {"model": ApiError, "description": "No such policy version."},
        422: {"model": ApiError, "description": "The same version twice, or a bad field."},
    },
)
def eval_pairs(request: Request, user: CurrentUser, body: EvalPairsIn) -> JobOut:
    """Queue blind evaluation pairs of two versions (admins): a job the scheduler runs, since a
    version the evaluation never sampled is sampled first. Audited."""
    from app.scheduler import request_eval_pairs

    require_admin(user)
    rt = get_runtime(request)
    try:
        job_id = request_eval_pairs(
            rt, user.id, a_version=body.a, b_version=body.b, n_prompts=body.prompts
        )
    except crud.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return JobOut(job_id=job_id)


@router.get(
    "/eval/votes",
    response_class=FileResponse,
    responses={
        **ERRORS,
        200: {"description": "Every evaluation vote: prompt, both replies, versions, choice."},
        404: {"model": ApiError, "description": "No evaluation vote yet."},
    },
)
def eval_votes(
    request: Request, user: CurrentUser, format: Literal["jsonl", "parquet"] = "jsonl"
) -> FileResponse:
    """Download the evaluation votes as a dataset file (admins). Audited."""
    from labeling.export import ExportError
    from labeling.vote_export import export_votes_file

    require_admin(user)
    rt = get_runtime(request)
    try:
        result = export_votes_file(engine=rt.engine, format=format)
    except ExportError as exc:
        raise HTTPException(404, str(exc)) from None
    with transaction(rt.engine) as session:
        crud.record_audit(
            session=session,
            user_id=user.id,
            action="eval.export",
            detail={"via": "api", "format": format, "rows": result.rows},
        )
    return FileResponse(
        result.path,
        media_type=result.media_type,
        filename=result.path.name,
        headers={"X-Prefloop-Rows": str(result.rows)},
        background=BackgroundTask(shutil.rmtree, result.path.parent, ignore_errors=True),
    )


# gold pairs (admins)


class GoldPairIn(BodyIn):
    prompt: str = Field(min_length=1, max_length=100_000)
    a: str = Field(min_length=1, max_length=100_000)
    b: str = Field(min_length=1, max_length=100_000)
    answer: Literal["a", "b", "tie", "both_bad"] = Field(description="The known answer.")

    @field_validator("prompt", "a", "b")
    @classmethod
    def _text(cls, value: str) -> str:
        return _not_blank(_without_nul(value)).strip()


class GoldImportIn(BodyIn):
    pairs: list[GoldPairIn] = Field(min_length=1, max_length=10_000)


class GoldImportOut(BaseModel):
    added: int
    skipped: int = Field(description="Already stored (same prompt and responses), or repeated.")


class GoldMarkIn(BodyIn):
    answer: Literal["a", "b", "tie", "both_bad"] = Field(
        description="The pair's answer, about its stored a and b (not a shown order)."
    )


class GoldStandingOut(BaseModel):
    name: str
    gold_seen: int
    gold_correct: int
    gold_accuracy: float | None
    counted_since: str | None = Field(description="When an admin last lifted the flag.")
    counted_seen: int = Field(description="Gold labels since then: these may flag.")
    counted_correct: int
    flagged: bool = Field(description="Stays until an admin lifts it.")
    flagged_at: int | None = Field(description="The counted gold label that flagged them.")
    left_out: bool = Field(description="Flagged while labeling.gold_filter is on.")


@router.post(
    "/gold",
    response_model=GoldImportOut,
    responses={**ERRORS, 422: {"model": ApiError, "description": "A bad field (named)."}},
)
def gold_import(request: Request, user: CurrentUser, body: GoldImportIn) -> GoldImportOut:
    """Import gold pairs (admins): shown to every annotator once, at labeling.gold_rate; never
    preference data. Audited."""
    from labeling.gold import import_gold
    from storage.crud import PromptIn
    from storage.gold import GoldIn
    from storage.models import Choice

    require_admin(user)
    rt = get_runtime(request)
    for n, item in enumerate(body.pairs):
        if item.a == item.b:
            raise HTTPException(422, f"pairs[{n}].b: the same text as a")
    items = [
        GoldIn(prompt=PromptIn(text=p.prompt, source="api"), a=p.a, b=p.b, answer=Choice(p.answer))
        for p in body.pairs
    ]
    added, skipped = import_gold(engine=rt.engine, items=items, user_id=user.id, via="api")
    return GoldImportOut(added=added, skipped=skipped)


@router.post(
    "/pairs/{pair_id}/gold",
    status_code=204,
    responses={
        **ERRORS,
        404: {"model": ApiError, "description": "No such pair."},
        409: {"model": ApiError, "description": "Gold already, an evaluation pair, or withdrawn."},
    },
)
def gold_mark(
    request: Request,
    user: CurrentUser,
    body: GoldMarkIn,
    pair_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> Response:
    """Mark a pair as gold with its answer (admins). Audited."""
    from labeling.gold import mark

    require_admin(user)
    rt = get_runtime(request)
    try:
        mark(engine=rt.engine, pair_id=pair_id, answer=body.answer, user_id=user.id, via="api")
    except crud.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except crud.Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)


@router.delete(
    "/pairs/{pair_id}/gold",
    status_code=204,
    responses={**ERRORS, 404: {"model": ApiError, "description": "No such gold pair."}},
)
def gold_unmark(
    request: Request, user: CurrentUser, pair_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> Response:
    """Undo a gold pair (admins): a marked pair is ordinary again, an imported one withdrawn.
    Audited."""
    from labeling.gold import unmark

    require_admin(user)
    rt = get_runtime(request)
    try:
        unmark(engine=rt.engine, pair_id=pair_id, user_id=user.id, via="api")
    except crud.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)


@router.get("/gold/annotators", response_model=list[GoldStandingOut], responses=ERRORS)
def gold_annotators(request: Request, user: CurrentUser) -> list[GoldStandingOut]:
    """Each annotator's gold accuracy and count, and whether they are flagged (admins)."""
    from labeling.gold import standing, standing_record

    require_admin(user)
    rt = get_runtime(request)
    labeling = rt.effective_settings().labeling
    return [
        GoldStandingOut(**standing_record(s, labeling))
        for s in standing(engine=rt.engine, labeling=labeling)
    ]


@router.post(
    "/gold/annotators/{name}/lift",
    status_code=204,
    responses={**ERRORS, 404: {"model": ApiError, "description": "No such user."}},
)
def gold_lift(
    request: Request,
    user: CurrentUser,
    name: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00\s]+$")],
) -> Response:
    """Lift an annotator's flag (admins): their labels count again, and their gold accuracy
    counts afresh from now. Audited."""
    from labeling.gold import lift

    require_admin(user)
    rt = get_runtime(request)
    try:
        lift(engine=rt.engine, name=name, user_id=user.id, via="api")
    except crud.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)


# disagreement review (admins)


class ReviewLabelOut(BaseModel):
    annotator: str | None = Field(description="Null for a proxy or seed label.")
    source: str = Field(description="human, proxy, seed, or review (an admin's decision).")
    choice: str = Field(description="About the pair's stored a and b.")
    reason: str | None
    seconds: float | None
    created_at: datetime
    guideline_version: int | None = Field(description="The guidelines' version it was made under.")


class ReviewPairOut(BaseModel):
    pair_id: int
    route: str
    status: str
    iteration_id: int | None
    prompt: str
    prompt_messages: list[dict[str, str]] | None
    a: str
    b: str
    gold_answer: str | None
    labels: list[ReviewLabelOut]


class DisagreementsOut(BaseModel):
    total: int = Field(description="Pairs whose human labels disagree (settled ones left out).")
    pairs: list[ReviewPairOut] = Field(description="The oldest first, from `offset`.")


class DecisionIn(BodyIn):
    choice: Literal["a", "b", "tie", "both_bad"] = Field(
        description="About the pair's stored a and b (not a shown order)."
    )
    note: str | None = Field(None, max_length=2000, description="Why (kept with the decision).")

    @field_validator("note")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _without_nul(value)


@router.get("/review/disagreements", response_model=DisagreementsOut, responses=ERRORS)
def review_disagreements(
    request: Request,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    include_settled: bool = False,
) -> DisagreementsOut:
    """The pairs whose human labels disagree, with both texts, every label and its reason
    (admins)."""
    from labeling.review import detail_record, disputed

    require_admin(user)
    rt = get_runtime(request)
    total, pairs = disputed(
        engine=rt.engine, limit=limit, offset=offset, include_settled=include_settled
    )
    return DisagreementsOut(total=total, pairs=[ReviewPairOut(**detail_record(p)) for p in pairs])


@router.post(
    "/pairs/{pair_id}/decision",
    status_code=204,
    responses={
        **ERRORS,
        404: {"model": ApiError, "description": "No such pair."},
        409: {
            "model": ApiError,
            "description": "An evaluation or gold pair, withdrawn, or one you labeled yourself.",
        },
    },
)
def review_decision(
    request: Request,
    user: CurrentUser,
    body: DecisionIn,
    pair_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> Response:
    """Settle a pair (admins): your choice decides it for DPO training and the export, whatever
    its labels say; a new decision replaces the last. Audited."""
    from labeling.review import settle

    require_admin(user)
    rt = get_runtime(request)
    try:
        settle(
            engine=rt.engine,
            pair_id=pair_id,
            choice=body.choice,
            user_id=user.id,
            via="api",
            note=body.note,
        )
    except crud.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except crud.Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)


# guidelines


class GuidelinesOut(BaseModel):
    version: int | None = Field(description="The version in force; null before the first.")
    text: str | None = Field(description="Markdown, written by an admin.")


class GuidelinesIn(BodyIn):
    text: str = Field(min_length=1, max_length=100_000, description="Markdown.")

    @field_validator("text")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return _not_blank(_without_nul(value))


class GuidelinesVersionOut(BaseModel):
    version: int


@router.get("/guidelines", response_model=GuidelinesOut, responses=ERRORS)
def get_guidelines(request: Request, user: CurrentUser) -> GuidelinesOut:
    """The labeling guidelines in force (Markdown; render it as untrusted text). Each label
    records the version it was made under."""
    from labeling.guidelines import current

    now = current(engine=get_runtime(request).engine)
    return GuidelinesOut(version=now[0] if now else None, text=now[1] if now else None)


@router.post(
    "/guidelines",
    response_model=GuidelinesVersionOut,
    responses={**ERRORS, 422: {"model": ApiError, "description": "Blank, or the same text."}},
)
def post_guidelines(
    request: Request, user: CurrentUser, body: GuidelinesIn
) -> GuidelinesVersionOut:
    """Publish a new version of the guidelines (admins). Audited."""
    from labeling.guidelines import publish

    require_admin(user)
    try:
        version = publish(
            engine=get_runtime(request).engine, text=body.text, user_id=user.id, via="api"
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return GuidelinesVersionOut(version=version)


# the annotator dashboard


class FiguresOut(BaseModel):
    labels: int
    labels_per_hour: float | None = Field(description="3600 x labels / the seconds they took.")
    median_seconds: float | None
    too_fast_share: float | None = Field(description="Share under labeling.too_fast_seconds.")
    peer_agreement: float | None = Field(
        description="Share of the others' labels on your pairs that match yours."
    )
    peer_n: int
    gold_seen: int
    gold_accuracy: float | None
    gold_flagged: bool
    labels_left_out: bool = Field(description="Flagged while labeling.gold_filter is on.")


@router.get("/me", response_model=FiguresOut, responses=ERRORS)
def my_figures(request: Request, user: CurrentUser) -> FiguresOut:
    """Your own figures, as the labeling page shows them."""
    from labeling.quality import annotator_figures

    rt = get_runtime(request)
    figures = annotator_figures(
        engine=rt.engine, user_id=user.id, labeling=rt.effective_settings().labeling
    )
    return FiguresOut(**figures)


@router.get("/quality", responses=ERRORS)
def quality(request: Request, user: CurrentUser) -> dict[str, Any]:
    """Agreement and the annotator dashboard, as `prefloop quality --json` (admins)."""
    from labeling.quality import quality_report

    require_admin(user)
    rt = get_runtime(request)
    return quality_report(engine=rt.engine, labeling=rt.effective_settings().labeling)
