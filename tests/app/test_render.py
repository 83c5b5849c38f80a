"""Untrusted Markdown renders to HTML holding no tag, handler or script URL from the input, and the
labeling view's pieces (prompt, conversation, response column) keep it that way."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from app.ui.render import markdown_to_safe_html, prompt_html, response_html

PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "[x](javascript:window.__pwned=1)",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "<javascript:alert(1)>",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "![i](http://tracker.example/pixel.png)",
]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def classes_of(html: str) -> list[str]:
    return [c for _, attrs in tags_of(html) for c in attrs.get("class", "").split()]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_is_inert(payload):
    parser = Tags()
    parser.feed(markdown_to_safe_html(payload))
    for tag, attrs in parser.tags:
        assert tag in {"p", "a", "strong", "em", "code", "pre"}, (payload, tag)
        assert not any(name.startswith("on") for name in attrs), (payload, attrs)
        if tag == "a":
            assert attrs["href"].startswith(("http://", "https://", "mailto:")), attrs


def test_markdown_still_renders():
    html = markdown_to_safe_html("**bold** and `a<b` and [site](https://example.org)\n\n- item")
    assert "<strong>bold</strong>" in html and "<code>a&lt;b</code>" in html
    assert '<a href="https://example.org" rel="nofollow noopener noreferrer"' in html
    assert "<li>item</li>" in html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_labeling_pieces_keep_untrusted_text_inert(payload):
    conversation = [{"role": payload, "content": payload}, {"role": "user", "content": payload}]
    for html in (
        prompt_html(payload),
        prompt_html(payload, conversation),
        response_html("A", payload, cut=True, elem_id="pf-text-left"),
    ):
        for tag, attrs in tags_of(html):
            assert tag in {"div", "span", "p", "a", "strong", "em", "code", "pre"}, (html, tag)
            assert not any(name.startswith("on") for name in attrs), (payload, attrs)
            if tag == "a":
                assert attrs["href"].startswith(("http://", "https://", "mailto:")), attrs


def test_a_cut_response_carries_the_marker_and_a_finished_one_none():
    cut = response_html("B", "and then the", cut=True, elem_id="pf-text-right")
    assert "Cut off at the length limit" in cut
    assert classes_of(cut).count("pf-cut") == 1 and "pf-was-cut" in classes_of(cut)
    assert "<p>and then the</p>" in cut and 'id="pf-text-right"' in cut
    finished = response_html("B", "done.", cut=False, elem_id="pf-text-right")
    assert "Cut off" not in finished
    assert not {"pf-cut", "pf-was-cut"} & set(classes_of(finished))
    assert "pf-response" in classes_of(finished)


def test_a_chat_prompt_shows_every_turn_with_its_role():
    html = prompt_html(
        "And in Python?",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is **CSV**?"},
            {"role": "assistant", "content": "Comma-separated values."},
            {"role": "tool<b>", "content": "{}"},
            {"role": "user", "content": "And in Python?"},
        ],
    )
    roles = re.findall(r'<div class="pf-role">(.*?)</div>', html)
    assert roles == ["System", "User", "Assistant", "tool&lt;b&gt;", "User"]
    assert "<strong>CSV</strong>" in html
    # a known role styles its turn; an unknown one is shown, never made a class
    assert '<div class="pf-turn pf-turn-system">' in html
    assert '<div class="pf-turn"><div class="pf-role">tool&lt;b&gt;</div>' in html
    assert not any("tool" in c for c in classes_of(html))


def test_a_plain_prompt_is_labelled_as_the_prompt():
    html = prompt_html("Write a haiku.")
    assert re.findall(r'<div class="pf-role">(.*?)</div>', html) == ["Prompt"]
    assert "<p>Write a haiku.</p>" in html and "pf-conversation" not in html
