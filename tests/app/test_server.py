"""The web app without a browser: sessions, the login, the gate, and authorization inside every
Gradio handler (called directly, as gradio_client or curl would)."""

from __future__ import annotations

import html
import inspect
import os
import stat
import time

import gradio as gr
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from app import sessions
from app.server import MAX_ADMIN_UPLOAD_BYTES, create_app, safe_next
from app.throttle import SignInThrottle
from app.ui.admin import build_admin
from app.ui.annotate import build_annotate
from app.ui.guard import AppContext, Refused
from storage import crud
from storage.db import transaction, upgrade
from storage.models import Label, Role
from storage.runtime import open_runtime
from tests.app.live_server import PASSWORD, seed_pairs, seed_users
from tests.app.test_throttle import Clock


@pytest.fixture
def rt(tmp_path):
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def users(rt):
    return seed_users(rt, {"ann": Role.annotator, "boss": Role.admin, "gone": Role.annotator})


@pytest.fixture
def client(rt, users):
    with transaction(rt.engine) as session:
        crud.update_user(session=session, user_id=users["gone"], active=False)
    with TestClient(create_app(rt), follow_redirects=False) as client:
        yield client


def login(client, name, password=PASSWORD):
    return client.post("/login", data={"name": name, "password": password, "next": "/label/"})


def test_session_cookie_round_trip_and_tampering():
    secret = b"k" * 32
    token = sessions.sign_session(secret, user_id=7, password_hash="h1")
    data = sessions.read_session(secret, token)
    assert data.user_id == 7 and data.fingerprint == sessions.password_fingerprint("h1")
    payload, mac = token.split(".")
    forged = sessions.sign_session(secret, user_id=8, password_hash="h1").split(".")[0]
    assert sessions.read_session(secret, f"{forged}.{mac}") is None
    assert sessions.read_session(b"other" * 8, token) is None
    assert sessions.read_session(secret, token, max_age=-1) is None
    assert sessions.read_session(secret, "garbage") is None


def test_secret_is_created_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFLOOP_SESSION_SECRET", raising=False)
    first = sessions.load_or_create_secret(tmp_path)
    assert sessions.load_or_create_secret(tmp_path) == first
    mode = stat.S_IMODE(os.stat(tmp_path / sessions.SECRET_FILE).st_mode)
    assert mode == 0o600


def test_safe_next_refuses_other_hosts():
    assert safe_next("/admin/") == "/admin/"
    for bad in ("https://evil.example/", "//evil.example", "/\\evil", "", None):
        assert safe_next(bad) == "/label/"


def test_anonymous_gets_only_the_login_page(client):
    assert client.get("/healthz").json() == {"ok": True}
    page = client.get("/label/", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert "Sign in" in client.get("/login").text
    for path in (
        "/label/",
        "/label/config",
        "/admin/config",
        "/label/gradio_api/info",
        "/admin/gradio_api/queue/join",
        "/label/gradio_api/run/label_left",  # the labeling events' direct (queue=False) path
        "/label/gradio_api/upload",
    ):
        posted = path.endswith(("join", "upload", "label_left"))
        response = client.post(path) if posted else client.get(path)
        assert response.status_code == 401, path


def test_login_logout_and_refusals(client):
    assert login(client, "ann", "wrong-password").status_code == 401
    assert login(client, "nobody").status_code == 401
    refused = login(client, "gone")
    assert refused.status_code == 403 and "disabled" in refused.text
    assert sessions.COOKIE_NAME not in client.cookies

    ok = login(client, "ann")
    assert ok.status_code == 303 and ok.headers["location"] == "/label/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/label/config").status_code == 200
    # an annotator never receives the admin app
    assert client.get("/admin/config").status_code == 403
    assert client.get("/admin/", headers={"accept": "text/html"}).headers["location"] == "/label/"

    client.get("/logout")
    client.cookies.clear()
    assert client.get("/label/config").status_code == 401


def failed_sign_ins(rt) -> list[dict]:
    with transaction(rt.engine, readonly=True) as session:
        audits = session.exec(select(crud.Audit).where(crud.Audit.action == "sign_in.failed"))
        return [audit.detail for audit in audits]


def test_repeated_wrong_passwords_back_off_then_get_429_until_the_penalty_ends(rt, client):
    clock = Clock()
    client.app.state.throttle = SignInThrottle(clock=clock)
    for _ in range(6):  # five free failures; the sixth shuts the name out for a second
        assert login(client, "boss", "wrong-password").status_code == 401
    refused = login(client, "boss")  # the right password: not even checked
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "Too many failed sign-ins" in refused.text and "Sign in" in refused.text
    assert login(client, "ann").status_code == 303  # another name from the same address
    clock.now += 1
    ok = login(client, "boss")
    assert ok.status_code == 303
    assert login(client, "boss", "wrong-password").status_code == 401  # the count was cleared
    assert login(client, "boss").status_code == 303

    audited = failed_sign_ins(rt)
    assert len(audited) == 7
    assert audited[0] == {"via": "login", "address": "testclient", "name": "boss"}


def test_the_penalty_doubles_and_never_exceeds_its_cap(client):
    clock = Clock()
    client.app.state.throttle = SignInThrottle(clock=clock)
    waits, wrong = [], 0
    while len(waits) < 13:
        response = login(client, "nobody", "wrong-password")  # unknown names count the same
        if response.status_code == 429:
            waits.append(int(response.headers["retry-after"]))
            clock.now += waits[-1]  # the client waits as told
        else:
            assert response.status_code == 401
            wrong += 1
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    assert wrong == 5 + 13  # each penalty past, the next guess was checked


def test_one_address_trying_many_names_is_slowed_down_too(client):
    clock = Clock()
    client.app.state.throttle = SignInThrottle(clock=clock)
    for i in range(21):
        assert login(client, f"guess{i}", "wrong-password").status_code == 401
    refused = login(client, "boss")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    clock.now += 1
    assert login(client, "boss").status_code == 303


def test_a_name_with_a_nul_is_a_wrong_password(rt, client):
    assert login(client, "bo\x00ss").status_code == 401
    assert failed_sign_ins(rt)[0]["name"] == "boss"


def test_admin_gets_the_admin_app(client):
    login(client, "boss")
    assert client.get("/admin/config").status_code == 200


@pytest.mark.parametrize("who", ["ann", "boss"])
@pytest.mark.parametrize(
    "route", ["upload", "process_recording", "component_server", "run/label_left"]
)
def test_the_labeling_app_takes_no_file(client, who, route):
    login(client, who)
    response = client.post(
        f"/label/gradio_api/{route}", files={"files": ("big.bin", b"x" * 1024 * 1024)}
    )
    assert response.status_code == 403 and "no uploads" in response.json()["detail"]


def test_the_admin_app_takes_a_prompt_file_up_to_the_cap(client):
    login(client, "boss")
    small = client.post(
        "/admin/gradio_api/upload", files={"files": ("prompts.jsonl", b'{"prompt": "hi"}\n')}
    )
    assert small.status_code == 200 and small.json()[0].endswith("prompts.jsonl")
    too_big = b"x" * (MAX_ADMIN_UPLOAD_BYTES + 1)
    refused = client.post("/admin/gradio_api/upload", files={"files": ("big.jsonl", too_big)})
    assert refused.status_code == 413
    assert f"maximum allowed size of {MAX_ADMIN_UPLOAD_BYTES} bytes" in refused.text


def _request(ctx: AppContext, user_id: int | None, password_hash: str | None = None) -> gr.Request:
    cookies = {}
    if user_id is not None:
        token = sessions.sign_session(ctx.secret, user_id=user_id, password_hash=password_hash)
        cookies[sessions.COOKIE_NAME] = token
    return gr.Request(cookies=cookies, headers={})


def _as_user(ctx: AppContext, user_id: int) -> gr.Request:
    """A request signed in as `user_id`, with the password they have now."""
    with transaction(ctx.rt.engine, readonly=True) as session:
        user = crud.get_user(session=session, user_id=user_id)
    return _request(ctx, user.id, user.password_hash)


def _handlers(blocks: gr.Blocks) -> dict:
    return {f.api_name: f.fn for f in blocks.fns.values()}


def _call_every_handler(blocks: gr.Blocks, request: gr.Request) -> list[str]:
    """Call each event handler with empty inputs; return the api names that did not refuse."""
    let_through = []
    for block_fn in blocks.fns.values():
        fn = block_fn.fn
        if fn is None:
            continue
        hints = gr.utils.get_type_hints(fn)
        kwargs = {
            name: request if hints.get(name) is gr.Request else None
            for name in inspect.signature(fn).parameters
        }
        try:
            fn(**kwargs)
        except Refused:
            continue
        let_through.append(block_fn.api_name)
    return let_through


def test_every_admin_handler_refuses_annotators_disabled_and_anonymous(rt, users):
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    blocks = build_admin(ctx)
    assert len(blocks.fns) >= 10
    assert _call_every_handler(blocks, _request(ctx, None)) == []
    assert _call_every_handler(blocks, _as_user(ctx, users["ann"])) == []
    # an admin whose password changed since sign-in, or who was disabled, is out at once
    stale = _request(ctx, users["boss"], "an older hash")
    assert _call_every_handler(blocks, stale) == []
    with transaction(rt.engine) as session:
        crud.update_user(session=session, user_id=users["boss"], active=False)
    assert _call_every_handler(blocks, _as_user(ctx, users["boss"])) == []


def test_every_labeling_handler_refuses_anonymous_and_disabled(rt, users):
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    blocks = build_annotate(ctx)
    with transaction(rt.engine) as session:
        gone = crud.update_user(session=session, user_id=users["gone"], active=False)
    assert len(blocks.fns) >= 6
    assert _call_every_handler(blocks, _request(ctx, None)) == []
    assert _call_every_handler(blocks, _request(ctx, gone.id, gone.password_hash)) == []


def test_labeling_handlers_store_the_meant_choice(rt, users):
    """The handler path without a browser: the shown side maps back to the pair's a/b."""
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    seed_pairs(rt, [(f"p{i}", f"a{i}", f"b{i}") for i in range(4)])
    by_name = _handlers(build_annotate(ctx))
    request = _as_user(ctx, users["ann"])
    outputs = by_name["show"](request)
    body, reason, shown = outputs[1:]
    assert reason == "" and isinstance(shown, int)
    left_text = body.split('id="pf-text-left"')[1].split('id="pf-text-right"')[0]
    time.sleep(0.01)
    body, reason, next_shown = by_name["label_left"](shown, "  clearer  ", request)
    assert "Saved" in body and reason == "" and next_shown != shown
    with transaction(rt.engine, readonly=True) as session:
        label = session.exec(select(Label)).one()
    meant_a = ">a" in left_text  # the response shown on the left was response a
    assert label.choice == ("a" if meant_a else "b")
    assert label.swapped == (not meant_a)
    assert label.reason == "clearer" and label.seconds > 0


def test_a_click_sends_the_judgments_ticked_on_the_shown_pair(rt, users):
    """With labeling.criteria, the page shows a row of A / B / tie per criterion with its keys,
    and a click sends {pair, criteria} for the shown pair: stored in the pair's a/b; a
    criterion that is not configured stores nothing and says why."""
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    seed_pairs(rt, [(f"p{i}", f"a{i}", f"b{i}") for i in range(3)])
    with transaction(rt.engine) as session:
        crud.set_overrides(
            session=session,
            values={"labeling.criteria": ["helpfulness", "safe_reply"]},
            user_id=None,
        )
    by_name = _handlers(build_annotate(ctx))
    request = _as_user(ctx, users["ann"])
    body, _, shown = by_name["show"](request)[1:]
    assert 'data-criterion="helpfulness"' in body and 'data-key="q"' in body
    assert 'data-criterion="safe_reply"' in body and 'data-key="z"' in body and "safe reply" in body
    meant_a = ">a" in body.split('id="pf-text-left"')[1].split('id="pf-text-right"')[0]
    sent = {"pair": shown, "criteria": {"helpfulness": "right", "safe_reply": "tie"}}
    body, _, next_shown = by_name["label_right"](sent, "", request)
    assert "Saved" in body
    forged = {"pair": next_shown, "criteria": {"honesty": "left"}}
    body, _, still = by_name["label_left"](forged, "", request)
    assert "Not saved" in body and "&#x27;honesty&#x27; is no criterion" in body
    assert still == next_shown
    with pytest.raises(gr.Error, match="criteria: expected"):
        by_name["label_left"]({"pair": next_shown, "criteria": ["left"]}, "", request)
    with transaction(rt.engine, readonly=True) as session:
        (label,) = session.exec(select(Label)).all()
    b_side = "b" if meant_a else "a"
    assert (label.choice, label.criteria) == (b_side, {"helpfulness": b_side, "safe_reply": "tie"})


def test_a_click_sends_a_rewrite_of_the_shown_response(rt, users):
    """The page offers "Rewrite A / B" with each response's source text in hidden text areas
    (escaped); a click sends {pair, rewrite: {side, text}}: a new response preferred over it."""
    from storage.models import Pair, PairStrategy, Response

    ctx = AppContext(rt=rt, secret=b"s" * 32)
    seed_pairs(rt, [(f"p{i}", f"<b>a{i}</b>", f"b{i}") for i in range(2)])
    by_name = _handlers(build_annotate(ctx))
    request = _as_user(ctx, users["ann"])
    body, _, shown = by_name["show"](request)[1:]
    assert 'id="pf-raw-left">' in body and "&lt;b&gt;a0&lt;/b&gt;" in body
    assert 'data-side="right">Rewrite B</button>' in body
    right = body.split('id="pf-raw-right">')[1].split("</textarea>")[0]
    sent = {"pair": shown, "rewrite": {"side": "right", "text": "A much better reply."}}
    body, _, _ = by_name["label_right"](sent, "", request)
    assert "Your rewrite is stored too." in body
    with pytest.raises(gr.Error, match="rewrite: expected"):
        by_name["label_left"]({"pair": shown, "rewrite": "text"}, "", request)
    with transaction(rt.engine, readonly=True) as session:
        rewrite = session.exec(select(Pair).where(Pair.strategy == PairStrategy.edit)).one()
        original = session.get(Response, rewrite.response_b_id).text
    assert original == html.unescape(right)


def test_a_click_labels_only_a_pair_the_user_holds(rt, users):
    """The page sends back the shown pair's id; an id the user does not hold (forged, another
    user's, a stale tab's) stores nothing, and the page says so."""
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    seed_pairs(rt, [(f"p{i}", f"a{i}", f"b{i}") for i in range(3)])
    by_name = _handlers(build_annotate(ctx))
    as_ann = _as_user(ctx, users["ann"])
    as_boss = _as_user(ctx, users["boss"])
    held_by_ann = by_name["show"](as_ann)[-1]
    held_by_boss = by_name["show"](as_boss)[-1]
    assert held_by_ann != held_by_boss

    outputs = by_name["label_left"](held_by_boss, "", as_ann)
    assert "Not saved" in outputs[0] and "no claim" in outputs[0]
    assert outputs[-1] == held_by_ann  # the page goes on showing the user's own pair
    with pytest.raises(gr.Error, match="No pair is shown"):
        by_name["label_left"](None, "", as_ann)
    # the events take the raw JSON values: a reason that is not text is refused, not stored
    with pytest.raises(gr.Error, match="reason: expected text"):
        by_name["label_left"](held_by_ann, {"not": "text"}, as_ann)
    with transaction(rt.engine, readonly=True) as session:
        assert session.exec(select(Label)).all() == []


def test_the_queue_counter_is_exact_for_a_small_queue_and_memoized_for_a_large_one(
    rt, users, monkeypatch
):
    from app.ui import guard

    ctx = AppContext(rt=rt, secret=b"k" * 32)
    seed_pairs(rt, [(f"count me {i}", "a", "b") for i in range(3)])

    def counted() -> int:
        with transaction(rt.engine, readonly=True) as session:
            stats = ctx.queue_stats(session, users["ann"], holds_pair=False)
        assert stats["queue_left"] == stats["queued_short"]  # ann holds and has had none
        return stats["queued_short"]

    assert counted() == 3
    seed_pairs(rt, [("one more", "a", "b")])
    assert counted() == 4  # below QUEUE_MEMO_FROM: counted anew at once

    monkeypatch.setattr(guard, "QUEUE_MEMO_FROM", 4)
    assert counted() == 4
    seed_pairs(rt, [("and another", "a", "b")])
    assert counted() == 4  # a large queue: the count of a moment ago serves
    monkeypatch.setattr(guard, "QUEUE_MEMO_SECONDS", 0.0)
    assert counted() == 5  # and is counted again once it is older than QUEUE_MEMO_SECONDS
