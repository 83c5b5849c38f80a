"""Untrusted text (prompts, model output, user names) to HTML that cannot run anything.

Markdown is rendered on the server by markdown-it with raw HTML off, so every `<tag>` in the text
is escaped and shows as text. Links keep only http, https and mailto targets (anything else, e.g.
`javascript:`, stays as the literal Markdown), and images are not rendered at all: a remote image
would let model output make the annotator's browser fetch a URL.
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
