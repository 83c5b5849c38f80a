"""The JSON API: who may call what, the labeling flow, export, and a schemathesis run."""

from __future__ import annotations

import io
import json

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from sqlmodel import select

from app import api
from app.auth import generate_token, hash_token
from app.throttle import SignInThrottle
from storage import crud, gold
from storage.db import transaction
from storage.models import Choice, Label, LabelSource, Role
from storage.runtime import Runtime
from storage.settings import load_settings
from tests.app.test_throttle import Clock
from tests.factories import make_pairs, make_user


def build_app(engine, tmp_path) -> FastAPI:
    app = FastAPI()
    app.state.runtime = Runtime(settings=load_settings(tmp_path), engine=engine)
    app.state.throttle = SignInThrottle()
    app.include_router(api.router)
    return app


def issue_token(session, user) -> str:
    token = generate_token()
    crud.update_user(session=session, user_id=user.id, token_hash=hash_token(token))
    return token


@pytest.fixture
def world(engine, tmp_path):
    """An app with an admin, an annotator, a disabled annotator and three queued pairs."""
    with transaction(engine) as session:
        tokens = {
            "admin": issue_token(session, make_user(session, role=Role.admin, name="boss")),
            "annotator": issue_token(session, make_user(session, name="ann")),
        }
        disabled = make_user(session, name="gone")
        tokens["disabled"] = issue_token(session, disabled)
        crud.update_user(session=session, user_id=disabled.id, active=False)
        pairs = make_pairs(session, 3)
        session.add(Label(pair_id=pairs[0].id, source=LabelSource.proxy, choice=Choice.a))
        pair_ids = [p.id for p in pairs]
        seed_evaluation_vote(session)
        gold.add_gold_pairs(
            session=session,
            items=[gold.GoldIn(crud.PromptIn("a gold prompt"), "good", "bad", Choice.a)],
        )
    client = TestClient(build_app(engine, tmp_path))
    return client, tokens, pair_ids


def seed_evaluation_vote(session) -> None:
    """v0 and v1, and one evaluation pair between them with a vote (done: nobody's to claim)."""
    import random

    from storage import evaluation
    from storage.models import Pair, PairStatus, Split
    from tests.factories import make_policy, make_prompts

    v0, v1 = make_policy(session, version=0), make_policy(session, version=1, deployed=False)
    (prompt,) = make_prompts(session, 1, split=Split.eval)
    slot = evaluation.EvalSlot(prompt, 0, "v0's reply", "v1's reply")
    evaluation.add_eval_pairs(
        session=session, a=v0, b=v1, slots=[slot], sampling={}, rng=random.Random(0)
    )
    pair = session.exec(select(Pair).order_by(Pair.id.desc())).first()
    pair.status, pair.n_labels = PairStatus.done, 1
    voter = make_user(session, name="voter")
    session.add(pair)
    session.add(Label(pair_id=pair.id, user_id=voter.id, source=LabelSource.human, choice="a"))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ROUTES = {
    # name: (method, path, json body, admin only)
    "next": ("GET", "/api/v1/pairs/next", None, False),
    "label": ("POST", "/api/v1/pairs/{pair}/label", {"choice": "left"}, False),
    "skip": ("POST", "/api/v1/pairs/{pair}/skip", None, False),
    "status": ("GET", "/api/v1/status", None, False),
    "iterations": ("GET", "/api/v1/iterations", None, True),
    "export": ("GET", "/api/v1/export?format=jsonl", None, True),
    "leaderboard": ("GET", "/api/v1/leaderboard", None, True),
    "eval_pairs": ("POST", "/api/v1/eval/pairs", {"a": 1, "b": 0}, True),
    "eval_votes": ("GET", "/api/v1/eval/votes?format=jsonl", None, True),
    "gold_import": (
        "POST",
        "/api/v1/gold",
        {"pairs": [{"prompt": "p", "a": "x", "b": "y", "answer": "b"}]},
        True,
    ),
    "gold_mark": ("POST", "/api/v1/pairs/{pair}/gold", {"answer": "a"}, True),
    "gold_unmark": ("DELETE", "/api/v1/pairs/{gold}/gold", None, True),
    "gold_annotators": ("GET", "/api/v1/gold/annotators", None, True),
    "gold_lift": ("POST", "/api/v1/gold/annotators/{name}/lift", None, True),
    "review_list": ("GET", "/api/v1/review/disagreements?limit=5", None, True),
    "review_decision": ("POST", "/api/v1/pairs/{pair}/decision", {"choice": "b"}, True),
    "guidelines": ("GET", "/api/v1/guidelines", None, False),
    "guidelines_publish": ("POST", "/api/v1/guidelines", {"text": "Be kind."}, True),
    "me": ("GET", "/api/v1/me", None, False),
    "quality": ("GET", "/api/v1/quality", None, True),
}
# What an admin gets where it is not 200.
ADMIN_STATUS = {
    "eval_pairs": 202,
    "gold_mark": 204,
    "gold_unmark": 204,
    "gold_lift": 204,
    "review_decision": 204,
}


def gold_pair_id(engine) -> int:
    with transaction(engine, readonly=True) as session:
        return max(gold.gold_answers(session=session))


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("who", ["anonymous", "bad token", "disabled", "annotator", "admin"])
def test_every_route_authorizes_every_caller(world, engine, route, who):
    client, tokens, pair_ids = world
    method, path, body, admin_only = ROUTES[route]
    if who == "anonymous":
        headers = {}
    else:
        headers = auth("pfl_not-a-token" if who == "bad token" else tokens[who])
    if route in ("label", "skip") and who in ("annotator", "admin"):
        claimed = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
        path = path.format(pair=claimed["pair_id"])
    path = path.format(pair=pair_ids[0], gold=gold_pair_id(engine), name="ann")
    response = client.request(method, path, json=body, headers=headers)
    expected = {
        "anonymous": 401,
        "bad token": 401,
        "disabled": 403,
        "annotator": 403 if admin_only else 200,
        "admin": ADMIN_STATUS.get(route, 200),
    }[who]
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if who == "anonymous":
        assert "token" in response.json()["detail"]


def test_the_spec_is_public_and_lists_every_route(world):
    client, _, _ = world
    spec = client.get("/api/v1/openapi.json").json()
    assert sorted(spec["paths"]) == sorted(
        {
            path.split("?")[0].replace("{pair}", "{pair_id}").replace("{gold}", "{pair_id}")
            for _, path, _, _ in ROUTES.values()
        }
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_the_spec_lists_the_errors_each_route_answers(world):
    client, _, _ = world
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    documented = {
        (method.upper(), path): sorted(int(code) for code in op["responses"] if code != "200")
        for path, ops in paths.items()
        for method, op in ops.items()
    }
    assert documented == {
        ("GET", "/api/v1/pairs/next"): [401, 403, 409, 429],
        ("POST", "/api/v1/pairs/{pair_id}/label"): [401, 403, 404, 409, 422, 429],
        ("POST", "/api/v1/pairs/{pair_id}/skip"): [401, 403, 404, 409, 422, 429],
        ("GET", "/api/v1/status"): [401, 403, 429],
        ("GET", "/api/v1/iterations"): [401, 403, 429],
        ("GET", "/api/v1/export"): [401, 403, 404, 422, 429],
        ("GET", "/api/v1/leaderboard"): [401, 403, 429],
        ("POST", "/api/v1/eval/pairs"): [202, 401, 403, 404, 422, 429],
        ("GET", "/api/v1/eval/votes"): [401, 403, 404, 422, 429],
        ("POST", "/api/v1/gold"): [401, 403, 422, 429],
        ("POST", "/api/v1/pairs/{pair_id}/gold"): [204, 401, 403, 404, 409, 422, 429],
        ("DELETE", "/api/v1/pairs/{pair_id}/gold"): [204, 401, 403, 404, 422, 429],
        ("GET", "/api/v1/gold/annotators"): [401, 403, 429],
        ("POST", "/api/v1/gold/annotators/{name}/lift"): [204, 401, 403, 404, 422, 429],
        ("GET", "/api/v1/review/disagreements"): [401, 403, 422, 429],
        ("POST", "/api/v1/pairs/{pair_id}/decision"): [204, 401, 403, 404, 409, 422, 429],
        ("GET", "/api/v1/guidelines"): [401, 403, 429],
        ("POST", "/api/v1/guidelines"): [401, 403, 422, 429],
        ("GET", "/api/v1/me"): [401, 403, 429],
        ("GET", "/api/v1/quality"): [401, 403, 429],
    }
    paused = paths["/api/v1/pairs/next"]["get"]["responses"]["409"]
    assert "paused" in paused["description"]


@pytest.mark.parametrize(
    "who, path, status",
    [
        ("annotator", "/api/v1/status", 200),
        ("admin", "/api/v1/export?format=jsonl", 200),
        ("admin", "/api/v1/export?format=jsonl&source=human", 404),
        ("admin", "/api/v1/export?iteration=-1", 422),
        ("annotator", "/api/v1/export", 403),
        (None, "/api/v1/pairs/next", 401),
    ],
)
def test_every_answer_forbids_content_sniffing(world, who, path, status):
    client, tokens, _ = world
    response = client.get(path, headers=auth(tokens[who]) if who else {})
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"


def test_pair_says_which_response_was_cut_at_the_token_limit(world, engine):
    client, tokens, _ = world
    headers = auth(tokens["annotator"])
    seed = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    assert (seed["left_cut"], seed["right_cut"]) == (False, False)  # no sampling details
    with transaction(engine) as session:
        from storage.models import Pair, Response

        pair = session.get(Pair, seed["pair_id"])
        cut, finished = (session.get(Response, i) for i in (pair.response_a_id, pair.response_b_id))
        cut.sampling = {"max_new_tokens": 256, "n_tokens": 256, "finished": False}
        finished.sampling = {"max_new_tokens": 256, "n_tokens": 40, "finished": True}
        session.add_all([cut, finished])
        cut_text = cut.text
    held = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    assert held["pair_id"] == seed["pair_id"]
    cut_on_left = held["left"] == cut_text
    assert (held["left_cut"], held["right_cut"]) == (cut_on_left, not cut_on_left)


def test_label_flow_translates_the_shown_order(world, engine):
    client, tokens, pair_ids = world
    headers = auth(tokens["annotator"])
    first = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    again = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    assert again["pair_id"] == first["pair_id"]  # the held claim, not a new one
    assert first["suggestion"] is None  # the default settings show it after the vote only
    with transaction(engine, readonly=True) as session:
        from storage.models import Pair, Response

        pair = session.get(Pair, first["pair_id"])
        text_a = session.get(Response, pair.response_a_id).text
    response = client.post(
        f"/api/v1/pairs/{first['pair_id']}/label",
        json={"choice": "left", "seconds": 3.5, "reason": "clearer"},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.json()["choice"] == ("a" if first["left"] == text_a else "b")
    repeat = client.post(
        f"/api/v1/pairs/{first['pair_id']}/label", json={"choice": "right"}, headers=headers
    )
    assert repeat.json()["choice"] == response.json()["choice"]  # idempotent
    skipped = client.post(f"/api/v1/pairs/{first['pair_id']}/skip", headers=headers)
    assert skipped.status_code == 409

    second = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    assert client.post(f"/api/v1/pairs/{second['pair_id']}/skip", headers=headers).json() == {
        "pair_id": second["pair_id"],
        "skipped": True,
    }
    status = client.get("/api/v1/status", headers=headers).json()
    assert (status["user"], status["role"], status["labeled_today"]) == ("ann", "annotator", 1)
    assert status["queue_left"] == 1 and status["paused"] is False

    (never_claimed,) = set(pair_ids) - {first["pair_id"], second["pair_id"]}
    unclaimed = client.post(
        f"/api/v1/pairs/{never_claimed}/label", json={"choice": "tie"}, headers=headers
    )
    assert unclaimed.status_code == 404 and "no claim" in unclaimed.json()["detail"]
    bad = client.post(
        f"/api/v1/pairs/{second['pair_id']}/label", json={"choice": "a"}, headers=headers
    )
    assert bad.status_code == 422
    nul = client.post(
        f"/api/v1/pairs/{second['pair_id']}/label",
        json={"choice": "tie", "reason": "a\x00b"},
        headers=headers,
    )
    assert nul.status_code == 422


def test_unknown_tokens_back_off_per_address_then_get_429(world, engine):
    client, tokens, _ = world
    clock = Clock()
    client.app.state.throttle = SignInThrottle(clock=clock)
    for _ in range(21):  # twenty free failures; the 21st shuts the address out for a second
        assert client.get("/api/v1/status", headers=auth("pfl_guess")).status_code == 401
    for token in ("pfl_guess", tokens["annotator"]):  # not even looked up
        refused = client.get("/api/v1/status", headers=auth(token))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "too many failed sign-ins" in refused.json()["detail"]
        assert refused.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/v1/status").status_code == 401  # no token: no guess, no count
    clock.now += 1
    assert client.get("/api/v1/status", headers=auth(tokens["annotator"])).status_code == 200
    assert client.get("/api/v1/status", headers=auth("pfl_guess")).status_code == 401
    assert client.get("/api/v1/status", headers=auth("pfl_guess")).headers["retry-after"] == "2"

    with transaction(engine, readonly=True) as session:
        audits = session.exec(select(crud.Audit).where(crud.Audit.action == "sign_in.failed"))
        audits = audits.all()
    assert len(audits) == 22
    assert audits[0].detail == {"via": "api", "address": "testclient"}


def strict_json(text: str):
    """JSON as the standard has it: no NaN or Infinity."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"choice": "left", "seconds": NaN}', "seconds"),
        ('{"choice": "left", "seconds": Infinity}', "seconds"),
        ('{"choice": "left", "seconds": -Infinity}', "seconds"),
        ('{"choice": "left", "seconds": 1e999}', "seconds"),  # Python's parser: Infinity
        ('{"choice": "left", "seconds": [NaN]}', "seconds"),
        ('{"choice": "left", "seconds": "soon"}', "seconds"),
        ('{"choice": "left", "seconds": -1}', "seconds"),
        ('{"choice": "left", "seconds": 86401}', "seconds"),
        ('{"choice": "up"}', "choice"),
        ('{"choice": NaN}', "choice"),
        ('{"choice": 1}', "choice"),
        ("{}", "choice"),
        ('{"choice": "left", "reason": NaN}', "reason"),
        ('{"choice": "left", "reason": 5}', "reason"),
        ('{"choice": "left", "reasons": "clearer"}', "reasons"),  # misspelled: not dropped
        ('{"choice": "left", "rewrite": {"side": "left", "text": "x", "txt": "y"}}', "rewrite"),
        ("NaN", None),
        ("[Infinity]", None),
    ],
)
def test_a_malformed_label_body_is_a_422_naming_the_field(world, body, field):
    client, tokens, _ = world
    headers = {**auth(tokens["annotator"]), "Content-Type": "application/json"}
    pair = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    response = client.post(f"/api/v1/pairs/{pair['pair_id']}/label", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    (error,) = strict_json(response.text)["detail"]
    assert error["loc"][:2] == (["body", field] if field else ["body"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_a_non_finite_query_number_is_a_422_naming_it(world, value):
    client, tokens, _ = world
    response = client.get(f"/api/v1/export?min_agreement={value}", headers=auth(tokens["admin"]))
    assert response.status_code == 422
    (error,) = strict_json(response.text)["detail"]
    assert error["loc"] == ["query", "min_agreement"] and error["type"] == "finite_number"


def test_next_is_null_when_nothing_is_left_and_409_when_paused(world, engine):
    client, tokens, _ = world
    headers = auth(tokens["annotator"])
    for _ in range(3):
        pair = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
        client.post(
            f"/api/v1/pairs/{pair['pair_id']}/label", json={"choice": "tie"}, headers=headers
        )
    assert client.get("/api/v1/pairs/next", headers=headers).json() == {"pair": None}
    with transaction(engine) as session:
        crud.set_overrides(session=session, values={"labeling.paused": True}, user_id=None)
    assert client.get("/api/v1/pairs/next", headers=headers).status_code == 409


def test_label_with_next_claims_the_following_pair_in_one_call(world, engine):
    client, tokens, pair_ids = world
    headers = auth(tokens["annotator"])
    pair = client.get("/api/v1/pairs/next", headers=headers).json()["pair"]
    seen = [pair["pair_id"]]
    while pair is not None:
        body = client.post(
            f"/api/v1/pairs/{pair['pair_id']}/label?next=true",
            json={"choice": "tie"},
            headers=headers,
        ).json()
        assert body["pair_id"] == pair["pair_id"] and body["choice"] == "tie"
        pair = body["next"]
        if pair is not None:
            assert pair["pair_id"] not in seen and pair["left"] != pair["right"]
            seen.append(pair["pair_id"])
    assert sorted(seen) == sorted(pair_ids)
    # the held claim is what GET /next returns now: nothing, every pair is labeled
    assert client.get("/api/v1/pairs/next", headers=headers).json() == {"pair": None}
    plain = client.post(f"/api/v1/pairs/{seen[0]}/label", json={"choice": "left"}, headers=headers)
    assert plain.json() == {
        "pair_id": seen[0],
        "choice": "tie",
        "guideline_version": None,
        "criteria": None,
        "next": None,
    }
    with transaction(engine) as session:
        crud.set_overrides(session=session, values={"labeling.paused": True}, user_id=None)
    paused = client.post(
        f"/api/v1/pairs/{seen[0]}/label?next=true", json={"choice": "tie"}, headers=headers
    )
    assert paused.status_code == 200 and paused.json()["next"] is None


def test_admin_export_download_and_iterations(world, engine):
    import pyarrow.parquet as pq

    client, tokens, pair_ids = world
    headers = auth(tokens["admin"])
    response = client.get("/api/v1/export?format=parquet&source=proxy", headers=headers)
    assert response.status_code == 200
    assert response.headers["x-prefloop-rows"] == "1"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column("pair_id").to_pylist() == [pair_ids[0]]
    assert table.column("source").to_pylist() == ["proxy"]
    conversational = client.get(
        "/api/v1/export?format=jsonl&layout=conversational", headers=headers
    )
    assert conversational.json()["prompt"][0]["role"] == "user"
    empty = client.get("/api/v1/export?source=human", headers=headers)
    assert empty.status_code == 404 and "nothing to export" in empty.json()["detail"]
    assert client.get("/api/v1/export?format=csv", headers=headers).status_code == 422
    for bad in ("iteration=-1", f"iteration={api.MAX_K + 1}", "annotator=a%00b"):
        refused = client.get(f"/api/v1/export?{bad}", headers=headers)
        assert refused.status_code == 422, bad
        assert refused.json()["detail"][0]["loc"][:2] == ["query", bad.split("=")[0]]
    with transaction(engine, readonly=True) as session:
        audits = [a for a in session.exec(__import__("sqlmodel").select(crud.Audit))]
    assert [a.action for a in audits].count("export") == 2

    with transaction(engine) as session:
        crud.start_iteration(session=session, policy_in_id=None, human_quota=5, human_budget=9)
    (iteration,) = client.get("/api/v1/iterations", headers=headers).json()
    assert (iteration["k"], iteration["state"], iteration["human_quota"]) == (0, "generating", 5)


# schemathesis: generated requests against the OpenAPI spec find no server error. (Its pytest
# loader `from_fixture` does not run under pytest 9.2, so the operations are driven here.)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error(engine, tmp_path, mode):
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    with transaction(engine) as session:
        token = issue_token(session, make_user(session, role=Role.admin, name="root"))
        pairs = make_pairs(session, 5)
        session.add(Label(pair_id=pairs[0].id, source=LabelSource.proxy, choice=Choice.b))
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(engine, tmp_path))
    operations = [result.ok() for result in schema.get_all_operations()]
    # one operation per route (two routes share a path)
    assert len(operations) == len(ROUTES)
    for operation in operations:

        @given(case=operation.as_strategy(GenerationMode(mode)))
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case):
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

        no_server_error()


def test_the_web_app_serves_the_api_past_its_login_gate(sqlite_engine, tmp_path):
    from app.server import create_app

    with transaction(sqlite_engine) as session:
        token = issue_token(session, make_user(session, name="ann"))
    rt = Runtime(settings=load_settings(tmp_path), engine=sqlite_engine)
    with TestClient(create_app(rt), follow_redirects=False) as client:
        assert client.get("/api/v1/status", headers=auth(token)).json()["user"] == "ann"
        anonymous = client.get("/api/v1/status")
        assert anonymous.status_code == 401 and "API token" in anonymous.json()["detail"]
        assert "/api/v1/pairs/next" in client.get("/api/v1/openapi.json").json()["paths"]


def test_the_leaderboard_the_votes_and_a_request_for_evaluation_pairs(world, engine):
    from storage.models import Audit, Job

    client, tokens, _ = world
    admin = auth(tokens["admin"])
    board = client.get("/api/v1/leaderboard", headers=admin).json()
    assert (board["anchor"], board["votes"], board["resamples"]) == (0, 1, 1000)
    versions = {r["version"]: r for r in board["ratings"]}
    assert versions[0]["rating"] == 1000.0 and versions[0]["win_rate_vs_anchor"] is None
    (h,) = board["head_to_head"]
    assert (h["a"], h["b"], h["votes"], h["a_wins"] + h["b_wins"]) == (0, 1, 1, 1)

    votes = client.get("/api/v1/eval/votes?format=jsonl", headers=admin)
    assert votes.status_code == 200 and votes.headers["x-prefloop-rows"] == "1"
    assert "attachment" in votes.headers["content-disposition"]
    (row,) = [json.loads(line) for line in votes.text.splitlines()]
    assert {row["version_a"], row["version_b"]} == {0, 1} and row["annotator"] == "voter"
    assert row["winner"] == row["version_a"] and row["choice"] == "a"
    assert {row["response_a"], row["response_b"]} == {"v0's reply", "v1's reply"}
    parquet = client.get("/api/v1/eval/votes?format=parquet", headers=admin)
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
    assert client.get("/api/v1/eval/votes?format=hf", headers=admin).status_code == 422

    queued = client.post("/api/v1/eval/pairs", json={"a": 1, "b": 0, "prompts": 5}, headers=admin)
    assert queued.status_code == 202
    same = client.post("/api/v1/eval/pairs", json={"a": 1, "b": 1}, headers=admin)
    assert same.status_code == 422 and "two different versions" in same.json()["detail"]
    unknown = client.post("/api/v1/eval/pairs", json={"a": 1, "b": 7}, headers=admin)
    assert unknown.status_code == 404 and "no policy version 7" in unknown.json()["detail"]
    bad = client.post("/api/v1/eval/pairs", json={"a": 1, "b": 0, "prompts": 0}, headers=admin)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "prompts"]
    with transaction(engine, readonly=True) as session:
        job = session.get(Job, queued.json()["job_id"])
        actions = [a.action for a in session.exec(select(Audit))]
    assert job.kind == "eval_pairs" and job.status == "queued"
    assert job.params == {"a": 1, "b": 0, "prompts": 5, "requested_by": job.params["requested_by"]}
    assert actions.count("eval.export") == 2 and actions.count("eval.request") == 1


def test_gold_pairs_through_the_api_imported_marked_measured_lifted_and_audited(world, engine):
    from storage.models import Audit, Pair, Response, Route

    client, tokens, pair_ids = world
    admin, ann = auth(tokens["admin"]), auth(tokens["annotator"])
    rows = [
        {"prompt": f"question {i}", "a": f"good {i}", "b": f"bad {i}", "answer": "a"}
        for i in range(3)
    ]
    imported = client.post("/api/v1/gold", json={"pairs": rows + rows[:1]}, headers=admin)
    assert imported.json() == {"added": 3, "skipped": 1}
    same = client.post(
        "/api/v1/gold",
        json={"pairs": [{"prompt": "p", "a": "x", "b": "x", "answer": "a"}]},
        headers=admin,
    )
    assert same.status_code == 422 and "pairs[0].b" in same.json()["detail"]
    bad = client.post(
        "/api/v1/gold",
        json={"pairs": [{"prompt": "p", "a": "x", "b": "y", "answer": "left"}]},
        headers=admin,
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
        "body",
        "pairs",
        0,
        "answer",
    ]
    marked = client.post(f"/api/v1/pairs/{pair_ids[1]}/gold", json={"answer": "b"}, headers=admin)
    assert marked.status_code == 204
    again = client.post(f"/api/v1/pairs/{pair_ids[1]}/gold", json={"answer": "b"}, headers=admin)
    assert again.status_code == 409 and "gold pair already" in again.json()["detail"]
    missing = client.post("/api/v1/pairs/999999/gold", json={"answer": "a"}, headers=admin)
    assert missing.status_code == 404

    # ann labels two gold pairs the wrong way (a qualification round: gold_rate 1)
    with transaction(engine) as session:
        crud.set_overrides(session=session, values={"labeling.gold_rate": 1.0}, user_id=None)
    for _ in range(2):
        pair = client.get("/api/v1/pairs/next", headers=ann).json()["pair"]
        with transaction(engine, readonly=True) as session:
            stored = session.get(Pair, pair["pair_id"])
            assert stored.route == Route.gold
            answer = gold.gold_answers(session=session)[pair["pair_id"]]
            text_a = session.get(Response, stored.response_a_id).text
        a_side = "left" if pair["left"] == text_a else "right"
        wrong = {"left": "right", "right": "left"}[a_side] if answer == "a" else a_side
        client.post(f"/api/v1/pairs/{pair['pair_id']}/label", json={"choice": wrong}, headers=ann)
    standing = client.get("/api/v1/gold/annotators", headers=admin).json()
    (row,) = standing
    assert (row["name"], row["gold_seen"], row["gold_correct"], row["flagged"]) == (
        "ann",
        2,
        0,
        False,  # min_gold_seen is 10
    )
    assert client.post("/api/v1/gold/annotators/nobody/lift", headers=admin).status_code == 404
    assert client.post("/api/v1/gold/annotators/ann/lift", headers=admin).status_code == 204
    assert client.delete(f"/api/v1/pairs/{pair_ids[1]}/gold", headers=admin).status_code == 204
    assert client.delete(f"/api/v1/pairs/{pair_ids[1]}/gold", headers=admin).status_code == 404
    with transaction(engine, readonly=True) as session:
        actions = [a.action for a in session.exec(select(Audit)) if a.action.startswith("gold.")]
        since = session.exec(select(crud.User).where(crud.User.name == "ann")).one().gold_since
    assert actions == ["gold.import", "gold.mark", "gold.lift", "gold.remove"]
    assert since is not None


def test_disagreements_and_a_decision_through_the_api(world, engine):
    from storage.models import Audit, Pair, PairStatus

    client, tokens, pair_ids = world
    admin = auth(tokens["admin"])
    with transaction(engine) as session:
        ann = crud.get_user_by_name(session=session, name="ann")
        other = make_user(session, name="other")
        pair = session.get(Pair, pair_ids[1])
        for user, choice, reason in ((ann, "a", "polite"), (other, "b", None)):
            session.add(
                Label(
                    pair_id=pair.id,
                    user_id=user.id,
                    source=LabelSource.human,
                    choice=choice,
                    reason=reason,
                )
            )
        pair.n_labels, pair.status = 2, PairStatus.done
        session.add(pair)
    listed = client.get("/api/v1/review/disagreements", headers=admin).json()
    assert listed["total"] == 1
    (item,) = listed["pairs"]
    assert item["pair_id"] == pair_ids[1] and item["a"] and item["b"]
    assert [(x["annotator"], x["choice"], x["reason"]) for x in item["labels"]] == [
        ("ann", "a", "polite"),
        ("other", "b", None),
    ]
    decided = client.post(
        f"/api/v1/pairs/{pair_ids[1]}/decision",
        json={"choice": "b", "note": "b fixes it"},
        headers=admin,
    )
    assert decided.status_code == 204
    assert client.get("/api/v1/review/disagreements", headers=admin).json()["total"] == 0
    settled = client.get("/api/v1/review/disagreements?include_settled=true", headers=admin).json()[
        "pairs"
    ][0]["labels"]
    assert settled[-1]["source"] == "review" and settled[-1]["reason"] == "b fixes it"
    bad = client.post(
        f"/api/v1/pairs/{pair_ids[1]}/decision", json={"choice": "left"}, headers=admin
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "choice"]
    assert (
        client.post(
            "/api/v1/pairs/999999/decision", json={"choice": "a"}, headers=admin
        ).status_code
        == 404
    )
    exported = client.get("/api/v1/export?format=jsonl&source=human", headers=admin)
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert [(r["pair_id"], r["source"]) for r in rows] == [(pair_ids[1], "review")]
    with transaction(engine, readonly=True) as session:
        actions = [a.action for a in session.exec(select(Audit))]
    assert actions.count("review.settle") == 1


def test_guidelines_through_the_api_and_the_version_on_each_label(world, engine):
    from storage.models import Audit

    client, tokens, _ = world
    admin, ann = auth(tokens["admin"]), auth(tokens["annotator"])
    assert client.get("/api/v1/guidelines", headers=ann).json() == {"version": None, "text": None}
    pair = client.get("/api/v1/pairs/next", headers=ann).json()["pair"]
    first = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label?next=true", json={"choice": "left"}, headers=ann
    ).json()
    assert first["guideline_version"] is None
    published = client.post("/api/v1/guidelines", json={"text": "# Be kind\n"}, headers=admin)
    assert published.json() == {"version": 1}
    assert client.get("/api/v1/guidelines", headers=ann).json() == {
        "version": 1,
        "text": "# Be kind\n",
    }
    same = client.post("/api/v1/guidelines", json={"text": "# Be kind\n"}, headers=admin)
    assert same.status_code == 422 and "the same as version 1" in same.json()["detail"]
    blank = client.post("/api/v1/guidelines", json={"text": "  "}, headers=admin)
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "text"]
    second = client.post(
        f"/api/v1/pairs/{first['next']['pair_id']}/label", json={"choice": "tie"}, headers=ann
    ).json()
    assert second["guideline_version"] == 1
    with transaction(engine, readonly=True) as session:
        actions = [a.action for a in session.exec(select(Audit))]
    assert actions.count("guidelines.publish") == 1


def test_criteria_are_offered_with_each_pair_and_judged_in_the_shown_order(world, engine):
    client, tokens, _ = world
    ann = auth(tokens["annotator"])
    with transaction(engine) as session:
        crud.set_overrides(
            session=session,
            values={"labeling.criteria": ["helpfulness", "harmlessness"]},
            user_id=None,
        )
    pair = client.get("/api/v1/pairs/next", headers=ann).json()["pair"]
    assert pair["criteria"] == ["helpfulness", "harmlessness"]
    unknown = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "left", "criteria": {"honesty": "left"}},
        headers=ann,
    )
    assert unknown.status_code == 422 and "'honesty' is no criterion" in unknown.json()["detail"]
    bad = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "left", "criteria": {"helpfulness": "both_bad"}},
        headers=ann,
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "criteria", "helpfulness"]
    done = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "tie", "criteria": {"helpfulness": "left", "harmlessness": "tie"}},
        headers=ann,
    ).json()
    with transaction(engine, readonly=True) as session:
        label = session.exec(
            select(Label).where(Label.pair_id == pair["pair_id"], Label.source == "human")
        ).one()
        from storage.models import Pair, Response

        text_a = session.get(Response, session.get(Pair, pair["pair_id"]).response_a_id)
    left_is_a = pair["left"] == text_a.text
    assert label.criteria == {"helpfulness": "a" if left_is_a else "b", "harmlessness": "tie"}
    assert done["criteria"] == label.criteria


def test_the_dashboard_and_ones_own_figures(world):
    client, tokens, pair_ids = world
    ann = auth(tokens["annotator"])
    pair = client.get("/api/v1/pairs/next", headers=ann).json()["pair"]
    client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "left", "seconds": 1.5},
        headers=ann,
    )
    own = client.get("/api/v1/me", headers=ann).json()
    assert (own["labels"], own["median_seconds"], own["too_fast_share"]) == (1, 1.5, 1.0)
    report = client.get("/api/v1/quality", headers=auth(tokens["admin"])).json()
    rows = {a["name"]: a for a in report["annotators"]}
    assert rows["ann"]["labels"] == 1 and rows["ann"]["labels_per_hour"] == 2400.0


def test_a_rewrite_through_the_api(world, engine):
    from storage.models import Pair, PairStrategy, Response

    client, tokens, _ = world
    ann = auth(tokens["annotator"])
    pair = client.get("/api/v1/pairs/next", headers=ann).json()["pair"]
    empty = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "right", "rewrite": {"side": "right", "text": ""}},
        headers=ann,
    )
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == [
        "body",
        "rewrite",
        "text",
    ]
    same = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "right", "rewrite": {"side": "right", "text": pair["right"]}},
        headers=ann,
    )
    assert same.status_code == 422 and "the same text" in same.json()["detail"]
    done = client.post(
        f"/api/v1/pairs/{pair['pair_id']}/label",
        json={"choice": "right", "rewrite": {"side": "right", "text": "Better, by hand."}},
        headers=ann,
    )
    assert done.status_code == 200
    with transaction(engine, readonly=True) as session:
        rewrite = session.exec(select(Pair).where(Pair.strategy == PairStrategy.edit)).one()
        original = session.get(Response, rewrite.response_b_id).text
        edited = session.get(Response, rewrite.response_a_id)
    assert original == pair["right"] and edited.text == "Better, by hand."


def test_api_calls_run_on_the_api_threads_alone(engine, tmp_path, monkeypatch):
    """`server.api_threads` bounds how many API calls a process works on at once: with 2, four
    concurrent calls' token checks run two at a time (a barrier of 2 lets each pair through; a
    third check inside at once would be counted), where the shared pool of 40 takes all four.
    The check is counted, not the claim: on SQLite two claims cannot be inside at once anyway
    (one writer at a time)."""
    import threading

    import anyio
    import httpx

    with transaction(engine) as session:
        users = [make_user(session, name=f"ann{i}") for i in range(4)]
        tokens = [issue_token(session, user) for user in users]
        make_pairs(session, 4)
    (tmp_path / "prefloop.toml").write_text("[server]\napi_threads = 2\n")
    app = build_app(engine, tmp_path)
    barrier = threading.Barrier(2, timeout=30)
    lock = threading.Condition()
    inside, most = 0, 0
    token_hash = api.hash_token

    def counted_hash(token: str) -> str:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            lock.notify_all()
            # Without the bound the other two calls come in meanwhile; with it they cannot.
            lock.wait_for(lambda: inside > 2, timeout=1.0)
        try:
            barrier.wait()  # both threads inside at once, or a timeout (BrokenBarrierError)
            return token_hash(token)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(api, "hash_token", counted_hash)

    async def four_calls() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = [None] * 4

            async def call(i: int) -> None:
                headers = {"Authorization": f"Bearer {tokens[i]}"}
                responses[i] = await client.get("/api/v1/pairs/next", headers=headers)

            async with anyio.create_task_group() as group:
                for i in range(4):
                    group.start_soon(call, i)
            return [r.status_code for r in responses]

    assert anyio.run(four_calls) == [200] * 4
    assert most == 2
    assert app.state.api_limiter.total_tokens == 2
