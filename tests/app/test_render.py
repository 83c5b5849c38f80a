"""Untrusted Markdown renders to HTML holding no tag, handler or script URL from the input."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from app.ui.render import markdown_to_safe_html

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
