"""Untrusted text (prompts, model output, user names) to HTML that cannot run anything.

Markdown is rendered on the server by markdown-it with raw HTML off, so every `<tag>` in the text
is escaped and shows as text. Links keep only http, https and mailto targets (anything else, e.g.
`javascript:`, stays as the literal Markdown), and images are not rendered at all: a remote image
would let model output make the annotator's browser fetch a URL.

The labeling view's pieces are built here too, from fixed markup around rendered text: a prompt
(a chat prompt as its turns, each labelled by role), and a response column with its side letter
and, for a response that stopped at the token limit, a cut-off marker.
"""

from __future__ import annotations

import html
from functools import lru_cache

from markdown_it import MarkdownIt

SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _safe_link(url: str) -> bool:
    return url.strip().lower().startswith(SAFE_SCHEMES)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.disable("image")
    md.validateLink = _safe_link

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def markdown_to_safe_html(text: str) -> str:
    """Render untrusted Markdown; the result holds no tag, attribute or URL from the input
    beyond what Markdown itself produces for safe links."""
    return _markdown().render(text or "")


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
CUT_TITLE = "The model hit the length limit (max_new_tokens) before it finished."


def prompt_html(text: str, messages: list[dict[str, str]] | None = None) -> str:
    """The prompt, or for a chat prompt every turn with its role (the last user turn is `text`)."""
    if not messages:
        return (
            '<div class="pf-prompt"><div class="pf-role">Prompt</div>'
            f'<div class="pf-turn-text">{markdown_to_safe_html(text)}</div></div>'
        )
    turns = []
    for message in messages:
        role = str(message.get("role", ""))
        css = f" pf-turn-{role}" if role in ROLES else ""
        turns.append(
            f'<div class="pf-turn{css}"><div class="pf-role">{escape(ROLES.get(role, role))}</div>'
            f'<div class="pf-turn-text">{markdown_to_safe_html(str(message.get("content", "")))}'
            "</div></div>"
        )
    return f'<div class="pf-prompt pf-conversation">{"".join(turns)}</div>'


def response_html(side: str, text: str, *, cut: bool, elem_id: str, action: str = "") -> str:
    """One response column: its side letter, a cut-off marker when `cut` (the stylesheet also
    marks where such a text stops), `action` (trusted HTML: a button) at the header's end, and
    the text in a box that scrolls on its own (focusable, so the arrow keys scroll it too)."""
    marker, box = "", "pf-response"
    if cut:
        marker = f'<span class="pf-cut" title="{CUT_TITLE}">Cut off at the length limit</span>'
        box += " pf-was-cut"
    return (
        f'<div class="pf-column"><div class="pf-side">{escape(side)}{marker}{action}</div>'
        f'<div class="{box}" id="{escape(elem_id)}" tabindex="0">{markdown_to_safe_html(text)}'
        "</div></div>"
    )
