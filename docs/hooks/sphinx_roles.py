"""MkDocs hook: the docstrings use Sphinx roles (:class:`X`, :meth:`~A.b`), which Markdown leaves
as literal text before the code span. Render them as the code span alone, as Sphinx shows them
(``~`` keeps the last component of the name)."""

import re

_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):<code>(~?)\.?([^<]*)</code>")


def _plain(match: "re.Match[str]") -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"<code>{name}</code>"


def on_page_content(html, page, config, files):
    return _ROLE.sub(_plain, html)
