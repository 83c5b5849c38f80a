"""The real app in a real browser (Debian's chromium through Playwright), on a real server.

Each test logs in through the login page and acts as a person would; the outcome is checked in
the database. Screenshots of each view go to artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.sessions import COOKIE_NAME
from storage import crud, reports
from storage.db import transaction
from storage.models import Label, Pair, Prompt, Response, Role, Setting
from tests.app.live_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    live_server,
    seed_pairs,
    seed_users,
)

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
XSS = {
    "script": "<script>window.__pwned=1</script>",
    "img": '<img src=x onerror="window.__pwned=1">',
    "link": "[x](javascript:window.__pwned=1)",
    "template": "${window.__pwned=1} {{constructor.constructor('window.__pwned=1')()}}",
}
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serve")
    # Two worker processes: every click and admin action must work whichever worker takes it.
    with live_server(data_dir, scheduler=True, workers=2) as server:
        server.users = seed_users(
            server.rt,
            {
                "ann": Role.annotator,
                "kim": Role.annotator,
                "eve": Role.annotator,
                "boss": Role.admin,
            },
        )
        # The XSS pair first, wanted by everyone: the first pair each user gets.
        seed_pairs(
            server.rt,
            [
                (
                    "Untrusted **markdown**",
                    f"{XSS['script']}\n\n{XSS['img']}",
                    f"{XSS['link']}\n\n{XSS['template']}",
                )
            ],
            overlap=10,
        )
        seed_pairs(
            server.rt,
            [
                (f"Question {i}: which reply is better?", f"reply-a-{i} (a)", f"reply-b-{i} (b)")
                for i in range(12)
            ],
            p_a=0.8,
        )
        yield server


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must install chromium ({CHROMIUM}): .ci/run does")
        pytest.skip(f"{CHROMIUM} not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def login(page, server, name: str, path: str = "/label/") -> None:
    page.goto(server.url + path)
    assert "/login" in page.url
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(re.compile(re.escape(path) + "$"))


def shot(page, name: str, *, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def shown_texts(page) -> tuple[str, str]:
    page.wait_for_selector("#pf-text-left")
    return page.inner_text("#pf-text-left"), page.inner_text("#pf-text-right")


def labels_of(server, user: str) -> list[tuple[Label, str, str]]:
    """(label, response a text, response b text) of a user's labels, oldest first."""
    with transaction(server.rt.engine, readonly=True) as session:
        rows = session.exec(
            select(Label, Pair)
            .join(Pair, Pair.id == Label.pair_id)
            .where(Label.user_id == server.users[user])
            .order_by(Label.id)
        ).all()
        return [
            (
                label,
                session.get(Response, pair.response_a_id).text,
                session.get(Response, pair.response_b_id).text,
            )
            for label, pair in rows
        ]


def act_and_wait(page, action) -> None:
    """Do `action` (a click or a key) and wait for the next pair to replace this one."""
    before = page.inner_text("#pf-text-left") + page.inner_text("#pf-text-right")
    action()
    page.wait_for_function(
        "(before) => { const l = document.querySelector('#pf-text-left');"
        " const r = document.querySelector('#pf-text-right');"
        " return l && r && (l.innerText + r.innerText) !== before; }",
        arg=before,
    )


def test_annotator_labels_by_click_and_keyboard(page, server):
    login(page, server, "ann")
    assert page.locator("a[href='/admin/']").count() == 0  # no admin link for annotators
    page.wait_for_selector("#pf-today")
    shot(page, "label")
    meant = []
    for how in ["click:pf-left", "click:pf-right", "key:1", "key:2", "key:3", "key:4"]:
        left, right = shown_texts(page)
        kind, what = how.split(":")
        if kind == "click":
            act_and_wait(page, lambda what=what: page.click(f"#{what}"))
        else:
            act_and_wait(page, lambda what=what: page.keyboard.press(what))
        side = {
            "pf-left": "left",
            "1": "left",
            "pf-right": "right",
            "2": "right",
            "3": "tie",
            "4": "both_bad",
        }[what]
        meant.append((side, left, right))
    shot(page, "label_after_votes")
    assert "Saved" in page.inner_text("#pf-feedback")
    # the default mode reveals the proxy's suggestion only after the vote
    assert "proxy suggested" in page.inner_text("#pf-feedback").lower()

    stored = labels_of(server, "ann")
    assert len(stored) == len(meant)
    swaps = set()
    for (label, text_a, text_b), (side, left, right) in zip(stored, meant, strict=True):
        assert {left.strip(), right.strip()} == {text_a.strip(), text_b.strip()}
        if side in ("tie", "both_bad"):
            assert label.choice == side
            continue
        chosen_text = left if side == "left" else right
        assert label.choice == ("a" if chosen_text.strip() == text_a.strip() else "b")
        assert label.swapped == (left.strip() == text_b.strip())
        swaps.add(label.swapped)
        assert label.seconds is not None and label.seconds >= 0
    today = int(page.inner_text("#pf-today"))
    assert today == len(meant)


def test_typing_a_reason_does_not_trigger_shortcuts(page, server):
    login(page, server, "kim")
    shown_texts(page)
    page.fill("#pf-reason textarea, #pf-reason input", "")
    page.click("#pf-reason textarea, #pf-reason input")
    page.keyboard.type("1 2 s more detail")
    page.wait_for_timeout(500)
    assert labels_of(server, "kim") == []
    act_and_wait(page, lambda: page.click("#pf-right"))
    ((label, _, _),) = labels_of(server, "kim")
    assert label.reason == "1 2 s more detail"


def test_untrusted_text_shows_as_text_and_nothing_runs(page, server):
    executed = []
    page.on("dialog", lambda dialog: (executed.append(dialog.message), dialog.dismiss()))
    login(page, server, "eve")
    left, right = shown_texts(page)
    shot(page, "label_xss")
    shown = left + "\n" + right
    for payload in (XSS["script"], XSS["img"], XSS["link"], "${window.__pwned=1}"):
        assert payload in shown, payload
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#pf-text-left script, #pf-text-right script").count() == 0
    assert page.locator("#pf-text-left img, #pf-text-right img").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    shown_pair = page.locator("#pf-text-left, #pf-text-right")  # not the rewrite's raw copy
    shown_pair.get_by_text("[x](javascript:window.__pwned=1)").click()
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert executed == []


def test_without_a_pair_the_page_offers_only_check_again(page, server):
    """Paused labeling (as an empty queue) shows a message and "Check again", and neither the
    buttons nor their keys; once resumed, "Check again" brings a pair and the buttons back."""
    with transaction(server.rt.engine) as session:
        crud.set_overrides(session=session, values={"labeling.paused": True}, user_id=None)
    try:
        login(page, server, "kim")
        page.wait_for_selector("#pf-message:has-text('paused')")
        shot(page, "label_paused")
        assert page.locator("#pf-refresh").is_visible()
        for control in ("#pf-left", "#pf-right", "#pf-tie", "#pf-both-bad", "#pf-skip"):
            assert page.locator(control).is_hidden(), control
        assert page.locator("#pf-text-left").count() == 0
        page.keyboard.press("1")
        page.wait_for_timeout(300)
        assert page.locator("#pf-message").is_visible()
    finally:
        with transaction(server.rt.engine) as session:  # as before: no override at all
            session.delete(session.get(Setting, "labeling.paused"))
    page.click("#pf-refresh")
    shown_texts(page)
    assert page.locator("#pf-left").is_visible() and page.locator("#pf-refresh").is_hidden()
    assert page.locator("#pf-message").count() == 0


def _session_cookie(server, name: str) -> str:
    response = httpx.post(
        server.url + "/login", data={"name": name, "password": PASSWORD, "next": "/label/"}
    )
    assert response.status_code == 303
    return response.cookies[COOKIE_NAME]


def test_annotator_cannot_reach_the_admin_view_or_its_endpoints(page, server):
    from gradio_client import Client

    login(page, server, "kim")
    page.goto(server.url + "/admin/")
    page.wait_for_url(re.compile(r"/label/$"))  # sent back to labeling
    shot(page, "annotator_sent_back_from_admin")

    cookies = {COOKIE_NAME: _session_cookie(server, "kim")}
    # the labeling app answers a direct call with the session ...
    show = httpx.post(
        server.url + "/label/gradio_api/run/show",
        json={"data": [], "session_hash": "direct-call"},
        cookies=cookies,
    )
    assert show.status_code == 200 and show.json()["data"][1].count("pf-today") == 1
    # ... the admin app refuses it, as it refuses an anonymous client
    with pytest.raises(Exception, match="403|admins only|Could not"):
        Client(server.url + "/admin/", httpx_kwargs={"cookies": cookies}, verbose=False)
    admin_call = httpx.post(
        server.url + "/admin/gradio_api/call/loop_pause",
        json={"data": [None, False]},
        cookies=cookies,
    )
    assert admin_call.status_code == 403
    with pytest.raises(Exception, match="401|not signed in|Could not"):
        Client(server.url + "/label/", verbose=False)
    assert httpx.get(server.url + "/label/config").status_code == 401
    with transaction(server.rt.engine, readonly=True) as session:
        assert "labeling.paused" not in crud.get_overrides(session=session)


def test_admin_starts_a_round_and_sees_its_state_change(page, server):
    login(page, server, "boss", path="/admin/")
    page.wait_for_selector("#pf-timeline")
    page.click("#pf-generate")
    page.wait_for_selector("#pf-loop-result:has-text('requested')")
    row = page.locator("#pf-jobs tr", has_text="generate").first
    row.wait_for()
    # the in-process scheduler picks the job up: queued, then running, then failed with its
    # error, since this server has no policy to sample; the page follows without a reload
    page.wait_for_function(
        "() => { const cells = [...document.querySelectorAll('#pf-jobs tr')]"
        ".find(r => r.innerText.includes('generate'))?.querySelectorAll('td');"
        " return cells && !['queued', 'running'].includes(cells[2].innerText.trim()); }",
        timeout=60_000,
    )
    shot(page, "admin_loop_after_generate")
    with transaction(server.rt.engine, readonly=True) as session:
        (job,) = [j for j in reports.recent_jobs(session=session) if j.kind == "generate"]
    assert job.status == "failed" and job.error.startswith("GenerationError: no deployed policy")
    row = page.locator("#pf-jobs tr", has_text="generate").first.inner_text()
    assert "failed" in row and "no deployed policy" in row


def test_admin_pauses_changes_a_setting_and_manages_users(page, server):
    login(page, server, "boss", path="/admin/")
    page.wait_for_selector("#pf-timeline")
    shot(page, "admin_loop")
    page.click("#pf-pause")
    page.wait_for_selector("#pf-loop-status:has-text('paused')")
    with transaction(server.rt.engine, readonly=True) as session:
        assert crud.get_overrides(session=session)["labeling.paused"] is True

    page.get_by_role("tab", name="Settings").click()
    # the form has its values (a later load would overwrite what the test types)
    page.wait_for_selector("#pf-settings-result .pf-settings-loaded", state="attached")
    beta = page.get_by_label("dpo.beta")
    beta.fill("-1")
    page.click("#pf-save-settings")
    page.wait_for_selector("#pf-settings-result .pf-error")
    assert "dpo.beta" in page.inner_text("#pf-settings-result")
    shot(page, "admin_settings_error")
    beta.fill("0.25")
    page.click("#pf-save-settings")
    page.wait_for_selector("#pf-settings-result:has-text('Saved')")
    with transaction(server.rt.engine, readonly=True) as session:
        overrides = crud.get_overrides(session=session)
    # saving the form changed what was edited, and left the pause made on the loop tab alone
    assert overrides["dpo.beta"] == 0.25 and overrides["labeling.paused"] is True

    page.get_by_role("tab", name="Users").click()
    page.fill("#pf-new-user input, #pf-new-user textarea", "newbie")
    page.click("#pf-add-user")
    page.wait_for_selector("#pf-users-result:has-text('Password (shown once)')")
    shot(page, "admin_users")
    page.get_by_role("tab", name="Plots").click()
    page.wait_for_timeout(1000)
    shot(page, "admin_plots")
    page.get_by_role("tab", name="Data").click()
    page.click("#pf-export")
    page.wait_for_selector("#pf-export-result:has-text('exported')")
    exported = int(page.inner_text("#pf-export-result").split()[0])
    with page.expect_download() as download:
        page.click("#pf-download a")
    lines = Path(download.value.path()).read_text().splitlines()
    assert exported >= 1 and len(lines) == exported  # ann's decided pairs, at least
    assert all({"prompt", "chosen", "rejected"} <= set(json.loads(line)) for line in lines)
    shot(page, "admin_data")

    page.get_by_role("tab", name="Loop").click()
    page.click("#pf-resume")
    page.wait_for_selector("#pf-loop-status:has-text('open')")


# A real instruct model's answer: Markdown with a list, a long code block (one 200-character
# line), an unbroken 200-character URL, a raw <script>, and cut at max_new_tokens mid-sentence.
LONG_LINE = '    message = "' + ("too long to fit on a screen, " * 7)[:184] + '"'
assert len(LONG_LINE) == 200
LONG_ANSWER = "\n\n".join(
    [
        "## Reading a CSV file in Python",
        "There are several ways to read a CSV file, and which one is best depends on how large "
        "the file is and what you want to do with the rows afterwards. " * 4,
        "- **The `csv` module** is in the standard library, so nothing has to be installed.\n"
        "- **pandas** reads the whole file into a DataFrame, which is convenient for analysis.\n"
        "- **polars** is faster on large files and uses less memory than pandas.\n"
        "- For files that do not fit in memory, read them in chunks.",
        "Here is a complete example with the standard library:",
        "```python\nimport csv\n\n\ndef read_rows(path):\n"
        '    with open(path, newline="") as f:\n'
        "        reader = csv.DictReader(f)\n"
        "        for row in reader:\n"
        "            yield row\n\n\n"
        f"def main():\n{LONG_LINE}\n"
        '    for row in read_rows("data.csv"):\n'
        "        print(row)\n```",
        "The documentation explains every option of the reader and the writer, see "
        "https://docs.python.org/3/library/csv.html?highlight=" + "DictReader" * 18 + " for more.",
        "Note that model output may contain markup such as <script>window.__pwned=1</script>, "
        "which must show as text.",
        "Each row is a dictionary that maps the column names to the values of that row, so you "
        "can write `row['name']` instead of remembering the position of each column. " * 9,
        "### Handling errors\n\nIf the file uses a different delimiter, pass `delimiter=';'` "
        "to the reader. If some rows have more fields than the header, the extra values are "
        "collected under the key given by `restkey`, and the reader will also",
    ]
)
SHORT_ANSWER = "Use `csv.DictReader` from the standard library."
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is a CSV file?"},
    {"role": "assistant", "content": "A text file of comma-separated values, one row a line."},
    {"role": "user", "content": "How do I read one in Python?"},
]


def seed_chat_pair(rt, *, cut_text: str, other_text: str) -> int:
    """A chat prompt with a pair for two annotators: `cut_text` ended at max_new_tokens,
    `other_text` finished."""
    with transaction(rt.engine) as session:
        prompt = crud.PromptIn(text=CONVERSATION[-1]["content"], messages=CONVERSATION)
        crud.add_prompts(session=session, prompts=[prompt])
        prompt_id = session.exec(
            select(Prompt.id).where(Prompt.content_hash == crud.prompt_hash("", CONVERSATION))
        ).one()
        sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512, "seed": 1}
        a = Response(prompt_id=prompt_id, text=cut_text, sampling={**sampling, "finished": False})
        b = Response(prompt_id=prompt_id, text=other_text, sampling={**sampling, "finished": True})
        session.add_all([a, b])
        session.flush()
        pair = Pair(prompt_id=prompt_id, response_a_id=a.id, response_b_id=b.id, overlap=2)
        session.add(pair)
        session.flush()
        return pair.id


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """A server of its own, so that the long pair is the first one its annotator gets."""
    with live_server(tmp_path_factory.mktemp("serve-long")) as server:
        server.users = seed_users(server.rt, {"lia": Role.annotator, "max": Role.annotator})
        seed_chat_pair(server.rt, cut_text=LONG_ANSWER, other_text=SHORT_ANSWER)
        seed_pairs(server.rt, [("A plain prompt", "next-a", "next-b")])
        yield server


def box(page, elem_id: str) -> dict:
    return page.evaluate(
        "(id) => { const e = document.getElementById(id); const r = e.getBoundingClientRect();"
        " return {top: r.top, height: r.height, scrollHeight: e.scrollHeight,"
        " clientHeight: e.clientHeight, scrollWidth: e.scrollWidth, clientWidth: e.clientWidth,"
        " scrollTop: e.scrollTop}; }",
        elem_id,
    )


def test_a_long_cut_off_answer_beside_a_short_one(page, long_server):
    login(page, long_server, "lia")
    left, right = shown_texts(page)
    shot(page, "label_long", full_page=False)  # what the annotator sees without scrolling
    long_side = "left" if "def read_rows" in left else "right"
    short_side = {"left": "right", "right": "left"}[long_side]
    assert SHORT_ANSWER.replace("`", "") in (right if long_side == "left" else left)
    long_id, short_id = f"pf-text-{long_side}", f"pf-text-{short_side}"

    # the conversation above the pair, each turn with its role
    roles = page.locator(".pf-conversation .pf-role").all_inner_texts()
    assert [r.lower() for r in roles] == ["system", "user", "assistant", "user"]
    assert "How do I read one in Python?" in page.inner_text(".pf-conversation")

    # equal columns; the long one scrolls inside a box of at most 55% of the viewport
    long_box, short_box = box(page, long_id), box(page, short_id)
    inner_height = page.evaluate("window.innerHeight")
    assert abs(long_box["height"] - short_box["height"]) <= 2, (long_box, short_box)
    assert abs(long_box["top"] - short_box["top"]) <= 2
    assert long_box["scrollHeight"] > long_box["clientHeight"]
    assert long_box["height"] <= 0.55 * inner_height + 1
    # ... and the buttons are on screen without scrolling the page
    buttons = page.locator("#pf-left").bounding_box()
    assert buttons["y"] + buttons["height"] <= inner_height, buttons

    # the code block: monospace, scrolling sideways inside itself; the page never does
    pre = f"#{long_id} pre"
    assert page.locator(pre).count() == 1
    code = page.evaluate(
        "(sel) => { const e = document.querySelector(sel);"
        " return {scrollWidth: e.scrollWidth, clientWidth: e.clientWidth,"
        " font: getComputedStyle(e.querySelector('code')).fontFamily}; }",
        pre,
    )
    assert code["scrollWidth"] > code["clientWidth"], code
    assert "monospace" in code["font"], code
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # the long URL wraps: the text box itself has nothing to scroll sideways
    assert long_box["scrollWidth"] <= long_box["clientWidth"], long_box

    # the cut marker on the cut side only
    assert page.locator(f".pf-column:has(#{long_id}) .pf-cut").is_visible()
    assert page.locator(f".pf-column:has(#{short_id}) .pf-cut").count() == 0
    assert page.locator(".pf-cut").count() == 1
    assert "pf-was-cut" in page.get_attribute(f"#{long_id}", "class")

    # raw HTML in the answer shows as text and runs nothing
    assert "<script>window.__pwned=1</script>" in page.inner_text(f"#{long_id}")
    assert page.locator(f"#{long_id} script").count() == 0
    assert page.evaluate("window.__pwned") is None

    # keyboard flow with the focus inside the scrolled column: the keys scroll it, "1" labels
    page.click(f"#{long_id} h2")
    assert page.evaluate("document.activeElement.id") == long_id
    page.keyboard.press("PageDown")
    page.wait_for_function("(id) => document.getElementById(id).scrollTop > 0", arg=long_id)
    shot(page, "label_long_scrolled", full_page=False)
    act_and_wait(page, lambda: page.keyboard.press("1"))
    ((label, text_a, _),) = labels_of(long_server, "lia")
    shown_left = LONG_ANSWER if long_side == "left" else SHORT_ANSWER
    assert label.choice == ("a" if shown_left == text_a else "b")
    assert set(shown_texts(page)) == {"next-a", "next-b"}
    assert page.locator(".pf-cut").count() == 0  # seeded responses: no sampling, no marker
    assert page.inner_text(".pf-prompt .pf-role").lower() == "prompt"


def test_a_narrow_window_stacks_the_responses_without_widening_the_page(browser, long_server):
    context = browser.new_context(viewport={"width": 600, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        login(page, long_server, "max")
        assert "def read_rows" in "".join(shown_texts(page))
        shot(page, "label_long_narrow")
        left, right = box(page, "pf-text-left"), box(page, "pf-text-right")
        assert right["top"] > left["top"] + left["height"]  # one above the other
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()


@pytest.mark.postgres
def test_annotator_labels_in_the_browser_on_postgres(tmp_path, page, monkeypatch):
    """The labeling page's whole path (sign-in, claim, click and key, the next pair) on
    PostgreSQL, with two worker processes."""
    from tests.conftest import fresh_postgres_database

    with fresh_postgres_database() as url:
        monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
        with live_server(tmp_path, workers=2) as pg_server:
            pg_server.users = seed_users(pg_server.rt, {"ann": Role.annotator})
            seed_pairs(pg_server.rt, [(f"Q{i}?", f"yes {i}", f"no {i}") for i in range(3)])
            login(page, pg_server, "ann")
            shown = []
            for action in (lambda: page.click("#pf-left"), lambda: page.keyboard.press("2")):
                shown.append(shown_texts(page))
                act_and_wait(page, action)
            assert "Saved" in page.inner_text("#pf-feedback")
            stored = labels_of(pg_server, "ann")
            assert len(stored) == 2
            for (label, text_a, _), (left, _), side in zip(
                stored, shown, ("left", "right"), strict=True
            ):
                picked_a = (left.strip() == text_a.strip()) == (side == "left")
                assert label.choice == ("a" if picked_a else "b")
            assert int(page.inner_text("#pf-today")) == 2


def test_annotators_vote_blind_and_the_admin_sees_the_leaderboard(tmp_path, page, browser):
    """An evaluation pair on the labeling page names no version; the vote lands as a vote of
    its version; the admin view's Evaluation tab shows the leaderboard's table and plot."""
    import random

    from storage import evaluation
    from storage.models import PolicyStatus, Split

    with live_server(tmp_path, workers=1) as server:
        seed_users(server.rt, {"ann": Role.annotator, "boss": Role.admin})
        with transaction(server.rt.engine) as session:
            v0 = crud.create_policy(
                session=session, version=0, path="/m/0", status=PolicyStatus.retired
            )
            v1 = crud.create_policy(
                session=session, version=1, path="/m/1", status=PolicyStatus.deployed
            )
            crud.add_prompts(
                session=session,
                prompts=[crud.PromptIn(text=f"Held out {i}?", split=Split.eval) for i in range(6)],
            )
            prompts = [pid for pid, _ in evaluation.eval_prompts(session=session, limit=6)]
            slots = [
                evaluation.EvalSlot(pid, 0, f"A plain answer {pid}.", f"A fine answer {pid}.")
                for pid in prompts
            ]
            evaluation.add_eval_pairs(
                session=session, a=v0, b=v1, slots=slots, sampling={}, rng=random.Random(2)
            )
        login(page, server, "ann")
        for i in range(6):
            left, right = shown_texts(page)
            assert "answer" in left and "answer" in right
            body = page.inner_text("body")
            assert "v0" not in body and "v1" not in body and "version" not in body.lower()
            wanted = "fine" if i < 4 else "plain"  # v1's reply 4 times, v0's twice
            button = "#pf-left" if wanted in left else "#pf-right"
            if i < 5:
                act_and_wait(page, lambda button=button: page.click(button))
            else:  # the last one: the queue is empty after it
                page.click(button)
        page.wait_for_selector("#pf-message")
        with transaction(server.rt.engine, readonly=True) as session:
            counts = evaluation.vote_counts(session=session)
        wins = {0: 0, 1: 0}
        for c in counts:
            wins[c.version_a if c.choice == "a" else c.version_b] += c.n
        assert wins == {0: 2, 1: 4}

        admin = browser.new_context(viewport={"width": 1280, "height": 900})
        admin_page = admin.new_page()
        admin_page.set_default_timeout(TIMEOUT_MS)
        login(admin_page, server, "boss", path="/admin/")
        admin_page.get_by_role("tab", name="Evaluation").click()
        admin_page.wait_for_selector("#pf-leaderboard tr[data-version='1']")
        rows = admin_page.locator("#pf-leaderboard tr[data-version]")
        assert [rows.nth(i).get_attribute("data-version") for i in range(2)] == ["1", "0"]
        assert "votes: 6" in admin_page.inner_text("#pf-eval-status")
        plot = admin_page.locator("#pf-leaderboard-plot")
        assert plot.is_visible() and plot.locator("line.pf-interval").count() == 2
        assert plot.bounding_box()["height"] > 50
        shot(admin_page, "admin_evaluation")
        admin.close()


def test_gold_pairs_flag_a_careless_annotator_and_the_admin_lifts_it_and_settles(
    tmp_path, page, browser
):
    """Gold pairs come on the labeling page like any other pair; ann gets them wrong and is
    flagged; on the Annotators tab the admin sees the flag and lifts it; on the Review tab the
    admin sees the pair ann and kim disagree on, with kim's reason, and settles it."""
    from storage import gold, queue

    with live_server(tmp_path, workers=1) as server:
        users = seed_users(
            server.rt, {"ann": Role.annotator, "kim": Role.annotator, "boss": Role.admin}
        )
        regular = seed_pairs(
            server.rt,
            [(f"Question {i}?", f"reply-a-{i} (a)", f"reply-b-{i} (b)") for i in range(2)],
            overlap=2,
        )
        with transaction(server.rt.engine) as session:
            gold.add_gold_pairs(
                session=session,
                items=[
                    gold.GoldIn(
                        crud.PromptIn(f"Check question {i}?"), f"right-{i}", f"wrong-{i}", "a"
                    )
                    for i in range(2)
                ],
            )
            crud.set_overrides(
                session=session,
                values={"labeling.gold_rate": 0.5, "labeling.min_gold_seen": 2},
                user_id=None,
            )
            for _ in regular:  # kim prefers b, with a reason
                claim = queue.claim_next_pair(
                    session=session, user_id=users["kim"], lease_seconds=600
                )
                b_side = "right" if not claim.swapped else "left"
                queue.submit_label(
                    session=session,
                    user_id=users["kim"],
                    pair_id=claim.pair_id,
                    shown_choice=b_side,
                    reason="<b>b</b> is shorter",
                )
        login(page, server, "ann")
        seen = []
        for i in range(4):  # two regular pairs and two gold pairs, in turn
            left, right = shown_texts(page)
            seen.append(left + right)
            assert "gold" not in page.inner_text("body").lower()
            # ann prefers a on regular pairs, and the wrong reply on gold pairs
            wanted = "wrong" if "right-" in left + right else "reply-a"
            button = "#pf-left" if wanted in left else "#pf-right"
            if i < 3:
                act_and_wait(page, lambda button=button: page.click(button))
            else:
                page.click(button)
        page.wait_for_selector("#pf-message")
        assert sum("right-" in texts for texts in seen) == 2
        page.reload()  # her own numbers, under the header when the page loads
        own = page.locator("#pf-own")
        own.wait_for()
        assert "2 labels" in own.inner_text() and "gold accuracy 0.00 (2)" in own.inner_text()

        admin = browser.new_context(viewport={"width": 1280, "height": 900})
        admin_page = admin.new_page()
        admin_page.set_default_timeout(TIMEOUT_MS)
        login(admin_page, server, "boss", path="/admin/")
        admin_page.get_by_role("tab", name="Annotators").click()
        flagged = admin_page.locator("#pf-gold-standing tr[data-annotator='ann']")
        flagged.wait_for()
        dashboard = admin_page.locator("#pf-dashboard tr[data-annotator='ann']")
        assert "flagged" in dashboard.inner_text()
        plot = admin_page.locator("#pf-dashboard-plot")
        # ann: per hour, median, too fast, gold (kim labeled untimed; two pairs are too few for κ)
        assert plot.is_visible() and plot.locator("rect.pf-dashboard-bar").count() == 4
        assert "pf-flagged" in flagged.get_attribute("class")
        assert "flagged at gold label 2" in flagged.inner_text()
        shot(admin_page, "admin_annotators")
        admin_page.fill("#pf-gold-name input, #pf-gold-name textarea", "ann")
        admin_page.click("#pf-gold-lift")
        admin_page.wait_for_selector("#pf-gold-lift-result:has-text('flag lifted')")
        assert "pf-flagged" not in (
            admin_page.locator("#pf-gold-standing tr[data-annotator='ann']").get_attribute("class")
        )

        admin_page.get_by_role("tab", name="Review").click()
        admin_page.wait_for_selector("#pf-review-count:has-text('2 pairs')")
        listed = admin_page.inner_text("#pf-review-list")
        assert "<b>b</b> is shorter" in listed and "reply-a-0" in listed
        shot(admin_page, "admin_review")
        admin_page.fill("#pf-review-pair input", str(regular[0]))
        admin_page.check("#pf-review-choice input[value='b']")
        admin_page.click("#pf-review-settle")
        admin_page.wait_for_selector("#pf-review-result:has-text('settled')")
        admin_page.wait_for_selector("#pf-review-count:has-text('1 pairs')")
        admin.close()
        from storage.preferences import iter_preferences

        with transaction(server.rt.engine, readonly=True) as session:
            rows = {r.pair_id: r for r in iter_preferences(session=session)}
            audits = [a.action for a in session.exec(select(crud.Audit))]
        assert rows[regular[0]].source == "review" and rows[regular[0]].chosen.startswith("reply-b")
        assert "gold.lift" in audits and "review.settle" in audits


def test_guidelines_open_the_first_time_stay_as_left_and_open_again_when_changed(tmp_path, page):
    """The panel opens the first time a version shows, stays closed across clicks once the
    annotator closes it, and opens again when an admin publishes a new version; each label
    records the version in force."""
    from storage import guidelines

    with live_server(tmp_path, workers=1) as server:
        users = seed_users(server.rt, {"ann": Role.annotator})
        seed_pairs(server.rt, [(f"Q{i}?", f"a-{i}", f"b-{i}") for i in range(4)])
        with transaction(server.rt.engine) as session:
            guidelines.publish(
                session=session,
                text="# Rules\n\n" + XSS["script"] + " Prefer **kind**.",
                user_id=None,
            )
        login(page, server, "ann")
        panel = page.locator("#pf-guidelines")
        panel.wait_for()
        page.wait_for_function("document.getElementById('pf-guidelines').open")
        assert "Prefer kind." in panel.inner_text() and "(version 1)" in panel.inner_text()
        assert page.evaluate("window.__pwned") is None
        shot(page, "label_guidelines")
        page.click("#pf-guidelines > summary")  # closed by the annotator
        page.wait_for_function("!document.getElementById('pf-guidelines').open")
        act_and_wait(page, lambda: page.click("#pf-left"))
        assert page.evaluate("document.getElementById('pf-guidelines').open") is False
        with transaction(server.rt.engine) as session:
            guidelines.publish(session=session, text="Rules, second edition.", user_id=None)
        act_and_wait(page, lambda: page.keyboard.press("2"))
        page.wait_for_function(
            "document.getElementById('pf-guidelines').dataset.version === '2'"
            " && document.getElementById('pf-guidelines').open"
        )
        with transaction(server.rt.engine, readonly=True) as session:
            versions = [
                label.guideline_version
                for label in session.exec(
                    select(Label).where(Label.user_id == users["ann"]).order_by(Label.id)
                )
            ]
        assert versions == [1, 2]


def test_criteria_are_ticked_by_key_or_click_and_sent_with_the_choice(tmp_path, page):
    """Two criteria under the pair: q/w/e and z/x/c tick them (no request), a click on a
    criterion keeps the number keys working, and the choice sends them with the pair."""
    with live_server(tmp_path, workers=1) as server:
        users = seed_users(server.rt, {"ann": Role.annotator})
        seed_pairs(server.rt, [(f"Q{i}?", f"a-{i}", f"b-{i}") for i in range(3)])
        with transaction(server.rt.engine) as session:
            crud.set_overrides(
                session=session,
                values={"labeling.criteria": ["helpfulness", "harmlessness"]},
                user_id=None,
            )
        login(page, server, "ann")
        page.wait_for_selector("#pf-criteria .pf-criterion[data-criterion='harmlessness']")
        shot(page, "label_criteria")
        left, _ = shown_texts(page)
        page.keyboard.press("w")  # helpfulness: B
        page.keyboard.press("z")  # harmlessness: A
        assert page.is_checked("input[name='pf-c-helpfulness'][value='right']")
        act_and_wait(page, lambda: page.keyboard.press("1"))
        # by mouse, then a number key with the radio button focused
        left2, _ = shown_texts(page)
        page.check("input[name='pf-c-harmlessness'][value='tie']")
        act_and_wait(page, lambda: page.keyboard.press("2"))
        assert not page.is_checked("input[name='pf-c-harmlessness'][value='tie']")  # fresh row
        page.keyboard.press("3")  # nothing ticked: none sent; the last pair
        page.wait_for_selector("#pf-message")
        server.users = users
        labels = labels_of(server, "ann")
    (first, a1, _), (second, a2, _), (third, _, _) = labels
    side = {True: "a", False: "b"}
    assert first.choice == side[left.startswith(a1[:3])]
    assert first.criteria == {
        "helpfulness": side[not left.startswith(a1[:3])],
        "harmlessness": side[left.startswith(a1[:3])],
    }
    assert second.choice == side[not left2.startswith(a2[:3])]
    assert second.criteria == {"harmlessness": "tie"}
    assert third.choice == "tie" and third.criteria is None


def test_an_annotator_rewrites_a_response_and_chooses_it(tmp_path, page):
    """ "Rewrite B" opens an editor on B's source text; the edit goes with the choice; the next
    pair starts with the editor closed and empty."""
    from storage.models import PairStrategy

    with live_server(tmp_path, workers=1) as server:
        seed_users(server.rt, {"ann": Role.annotator})
        seed_pairs(server.rt, [(f"Q{i}?", f"**plain** a-{i}", f"plain b-{i}") for i in range(2)])
        login(page, server, "ann")
        _, right = shown_texts(page)
        page.click(".pf-rewrite-open[data-side='right']")
        editor = page.locator("#pf-rewrite-text")
        editor.wait_for()
        source = editor.input_value()
        assert source.replace("*", "") == right  # the source text, Markdown and all
        editor.fill(source + " And a kind closing.")
        page.keyboard.press("1")  # typed into the editor: no shortcut
        assert page.locator("#pf-rewrite-editor").is_visible()
        page.keyboard.press("Backspace")
        shot(page, "label_rewrite")
        act_and_wait(page, lambda: page.click("#pf-right"))
        assert page.locator("#pf-rewrite-editor").is_hidden()
        assert page.locator("#pf-feedback").inner_text().endswith("Your rewrite is stored too.")
        with transaction(server.rt.engine, readonly=True) as session:
            rewrite = session.exec(select(Pair).where(Pair.strategy == PairStrategy.edit)).one()
            edited = session.get(Response, rewrite.response_a_id)
            original = session.get(Response, rewrite.response_b_id)
        assert edited.text == source + " And a kind closing."
        assert original.text == source and edited.edited_from_id == original.id
        left, _ = shown_texts(page)  # the next pair's, in the editor when asked
        page.click(".pf-rewrite-open[data-side='left']")
        assert page.locator("#pf-rewrite-text").input_value().replace("*", "") == left
