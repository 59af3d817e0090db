#!/usr/bin/env python3
"""Generate the documentation site's references (ORCH-6211).

* ``docs/reference/configuration.md`` from ``contracts/config/config.schema.json``
  (itself generated from the config structs): every section and field with its
  type, default and constraints, and the comment written next to the field in
  ``llama_orch/core/config.py`` (the schema carries no field descriptions);
* ``docs/reference/metrics.md`` from ``ci/metrics.lint.json``: every metric with
  its type, unit, labels, presence and series budget.

Standard library only; output is deterministic.

    python3 tools/gen_docs.py          # (re)write both pages
    python3 tools/gen_docs.py --check  # exit 1 when either is stale
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path("contracts/config/config.schema.json")
LINT = Path("ci/metrics.lint.json")
CONFIG_PY = Path("packages/core/src/llama_orch/core/config.py")
CONFIG_PAGE = Path("docs/reference/configuration.md")
METRICS_PAGE = Path("docs/reference/metrics.md")

Schema = dict[str, Any]


def _ref_name(node: Schema) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[1] if ref else None


def _anchor(name: str) -> str:
    return name.lower()


def _type(node: Schema) -> str:
    """A short human type of a schema node."""
    if name := _ref_name(node):
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in node:
        kinds = [_type(n) for n in node["anyOf"] if n.get("type") != "null"]
        nullable = any(n.get("type") == "null" for n in node["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object":
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            return f"map of string → {_type(values)}"
        return "object"
    return f"{kind}" if kind else "any"


def _constraints(node: Schema) -> str:
    if "anyOf" in node:
        return "; ".join(c for c in (_constraints(n) for n in node["anyOf"]) if c)
    parts = []
    for key, text in (
        ("minimum", "≥ {}"),
        ("exclusiveMinimum", "> {}"),
        ("maximum", "≤ {}"),
        ("exclusiveMaximum", "< {}"),
        ("minLength", "length ≥ {}"),
        ("maxLength", "length ≤ {}"),
        ("minItems", "≥ {} items"),
        ("maxItems", "≤ {} items"),
    ):
        if key in node:
            parts.append(text.format(node[key]))
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    for sub in ("items", "additionalProperties"):
        if isinstance(node.get(sub), dict) and not _ref_name(node[sub]):
            inner = _constraints(node[sub])
            if inner:
                parts.append(f"each {inner}")
    return "; ".join(parts)


def _default(struct: Schema, field: str, node: Schema) -> str:
    if "default" in node:
        return f"`{json.dumps(node['default'], ensure_ascii=False)}`"
    if field in struct.get("required", []):
        return "required"
    return "see section" if _ref_name(node) else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if "\\|" not in text else text


def _walk(defs: dict[str, Schema], root: str) -> list[tuple[str, str]]:
    """(struct name, where it appears) in breadth-first order from the root."""
    order: list[tuple[str, str]] = [(root, "top level")]
    seen = {root}
    i = 0
    while i < len(order):
        name, where = order[i]
        i += 1
        for field, node in sorted(defs[name].get("properties", {}).items()):
            path = field if where == "top level" else f"{where}.{field}"
            for sub, suffix in _children(node):
                if sub not in seen:
                    seen.add(sub)
                    order.append((sub, path + suffix))
    return order


def _children(node: Schema) -> list[tuple[str, str]]:
    if name := _ref_name(node):
        return [(name, "")]
    out = []
    for alt in node.get("anyOf", []):
        out += _children(alt)
    if isinstance(node.get("items"), dict):
        out += [(n, s + "[]") for n, s in _children(node["items"])]
    if isinstance(node.get("additionalProperties"), dict):
        out += [(n, s + ".<name>") for n, s in _children(node["additionalProperties"])]
    return out


def field_comments(source: str) -> dict[str, dict[str, str]]:
    """``{class: {field: comment}}``: a field's trailing comment, else the comment
    lines right above it."""
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = comments.get(stmt.end_lineno or stmt.lineno, "")
            if not text:
                above, n = [], stmt.lineno - 1
                while n in comments and lines[n - 1].lstrip().startswith("#"):
                    above.insert(0, comments[n])
                    n -= 1
                text = " ".join(above)
            if text:
                out.setdefault(node.name, {})[stmt.target.id] = text
    return out


def render_configuration(schema: Schema, notes: dict[str, dict[str, str]]) -> str:
    defs = schema["$defs"]
    root = _ref_name(schema)
    assert root, "the schema's root must be a $ref"
    out = [
        "# Configuration reference\n\n",
        "<!-- Generated by tools/gen_docs.py from contracts/config/config.schema.json; "
        "do not edit. -->\n\n",
        "Generated from [the config schema](../../contracts/config/config.schema.json), which "
        "is generated from the msgspec structs in `llama_orch.core.config`; the same file "
        "configures `orchestratord` and `pool-managerd` (YAML, or JSON for a `.json` path). "
        "Unknown keys are an error. What the settings do is explained in the concept and "
        "operations pages; the notes are the comments next to each field in "
        "[config.py](../../packages/core/src/llama_orch/core/config.py).\n",
    ]
    for name, where in _walk(defs, root):
        struct = defs[name]
        out.append(f"\n## {name}\n\n")
        out.append(f"Path: `{where}`\n\n" if where != "top level" else "The top level.\n\n")
        if struct.get("description"):
            out.append(struct["description"].replace("``", "`") + "\n\n")
        out.append("| key | type | default | constraints | notes |\n|---|---|---|---|---|\n")
        for field, node in sorted(struct.get("properties", {}).items()):
            note = notes.get(name, {}).get(field, "").replace("``", "`")
            cells = [
                f"`{field}`",
                _type(node),
                _default(struct, field, node),
                _constraints(node),
                note,
            ]
            out.append("| " + " | ".join(_cell(c) or "—" for c in cells) + " |\n")
    return "".join(out)


def render_metrics(lint: Schema) -> str:
    out = [
        "# Metrics reference\n\n",
        "<!-- Generated by tools/gen_docs.py from ci/metrics.lint.json; do not edit. -->\n\n",
        "Generated from [the metrics lint file](../../ci/metrics.lint.json) "
        f"(version {lint['version']}), which `tools/metrics_lint.py` checks against a real "
        "scrape of `GET /metrics`. Every series carries exactly the labels listed "
        "(histograms add `le`). What each metric counts is in "
        "[the metrics contract](../../.specs/metrics/contract.md).\n\n",
        "> " + lint["about"] + "\n\n",
        "| metric | type | unit | labels | presence | max series |\n|---|---|---|---|---|---|\n",
    ]
    for name, m in sorted(lint["metrics"].items()):
        labels = ", ".join(f"`{label}`" for label in m["labels"]) or "—"
        out.append(
            f"| `{name}` | {m['type']} | {m.get('unit', '—')} | {labels} | "
            f"{m['presence']} | {m['max_series']} |\n"
        )
    out.append("\n## Label budgets\n\nThe most distinct values one label may take.\n\n")
    out.append("| label | values |\n|---|---|\n")
    for label, budget in sorted(lint["label_budgets"].items()):
        out.append(f"| `{label}` | {budget} |\n")
    return "".join(out)


def outputs(root: Path = ROOT) -> dict[Path, str]:
    schema = json.loads((root / SCHEMA).read_text(encoding="utf-8"))
    lint = json.loads((root / LINT).read_text(encoding="utf-8"))
    notes = field_comments((root / CONFIG_PY).read_text(encoding="utf-8"))
    return {
        root / CONFIG_PAGE: render_configuration(schema, notes),
        root / METRICS_PAGE: render_metrics(lint),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a page is stale")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    stale = []
    for path, text in outputs(root).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(root)}")
    for path in stale:
        print(
            f"gen_docs: {path.relative_to(root)} is stale: run tools/gen_docs.py", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
