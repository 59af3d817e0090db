"""MkDocs hooks of the documentation site (``mkdocs.yml`` → ``hooks:``), ORCH-6210.

* Pages kept elsewhere in the repository are included, not copied: each entry
  ``site page: repository file`` of ``extra.include`` in ``mkdocs.yml`` becomes
  a page built from the file's current text (the adapter author guide lives
  in ``.docs/``); its links are read relative to the file's real place.
* A link from a page to a repository file outside ``docs/`` (written relative
  to the page's real location, so ``ci/scripts/check_links.sh`` checks it in
  the repository too) is rendered as the file's repository path, or as a link
  under ``extra.repo_blob_url`` when the site config sets one; a link to the
  source of an included page becomes a link to that page. A link to a
  repository file that does not exist is an error, so ``mkdocs build --strict``
  fails on it like on a broken page link.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.llama_orch")

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _included(config: Any) -> dict[str, str]:
    """site page -> the repository file it is built from (``extra.include``)."""
    return dict((config.get("extra") or {}).get("include") or {})


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for page, source in _included(config).items():
        files.append(File.generated(config, page, abs_src_path=str(root / source)))
    return files


def _origin(page_src: str, config: Any) -> Path:
    """The repository file a page's relative links are written against."""
    root = _root(config)
    included = _included(config)
    if page_src in included:
        return root / included[page_src]
    return Path(config["docs_dir"]).resolve() / page_src


def _rewrite(text: str, target: str, origin: Path, config: Any, page: str) -> str | None:
    """None to leave the link to MkDocs; else the Markdown that replaces it."""
    if _SCHEME.match(target) or target.startswith(("#", "/")):
        return None
    path, _, fragment = target.partition("#")
    root = _root(config)
    docs = Path(config["docs_dir"]).resolve()
    resolved = Path(posixpath.normpath(origin.parent.joinpath(path).as_posix()))
    if resolved.is_relative_to(docs) and origin.is_relative_to(docs):
        return None  # a page of the site linking a page of the site: MkDocs checks it
    if not resolved.is_relative_to(root) or not resolved.exists():
        log.warning("%s: link to %s: no such file in the repository", page, target)
        return text
    included = {(root / src).resolve(): site for site, src in _included(config).items()}
    if resolved in included:  # the source of an included page: link that page
        here = posixpath.dirname(page)
        target = posixpath.relpath(included[resolved], here or ".")
        return f"[{text}]({target}{'#' + fragment if fragment else ''})"
    rel = resolved.relative_to(root).as_posix()
    base = (config.get("extra") or {}).get("repo_blob_url")
    if base:
        return f"[{text}]({base.rstrip('/')}/{rel}{'#' + fragment if fragment else ''})"
    if text.strip("`").rstrip("/") == rel:
        return f"`{rel}`"
    return f"{text} (`{rel}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    origin = _origin(page.file.src_uri, config)
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced:

            def sub(m: re.Match[str]) -> str:
                new = _rewrite(m["text"], m["target"], origin, config, page.file.src_uri)
                return m[0] if new is None else new

            line = _LINK.sub(sub, line)
        out.append(line)
    return "".join(out)
