#!/usr/bin/env python3
"""Check a Prometheus text scrape against ``ci/metrics.lint.json`` (ORCH-7010..ORCH-7014).

Problems found, one string each:

- a metric family the lint file does not list (extra, e.g. a renamed metric);
- a listed metric of another type;
- a series whose label set differs from the listed one (a missing or an
  unexpected label), or whose label value is empty;
- a listed metric the run must show (its ``presence`` is in ``require``)
  that is absent;
- more series for a metric than its ``max_series``, or more distinct values
  of a label than its ``label_budgets`` entry.

Standard library only.

    tools/metrics_lint.py SCRAPE.txt            # presence "always" required
    tools/metrics_lint.py --url http://127.0.0.1:8080/metrics --require always,after_task
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINT_FILE = ROOT / "ci" / "metrics.lint.json"
PRESENCE = ("always", "after_task", "on_event", "gpu", "reserved")
_HIST_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<v>\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def load_lint(path: Path = LINT_FILE) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    for name, spec in doc["metrics"].items():
        if spec["presence"] not in PRESENCE:
            raise ValueError(f"{name}: unknown presence {spec['presence']!r}")
        if spec["type"] not in ("counter", "gauge", "histogram"):
            raise ValueError(f"{name}: unknown type {spec['type']!r}")
    return doc


def _labels(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            raise ValueError(f"unparsable label set {{{text}}}")
        out[m[1]] = m[2]
        pos = m.end()
    return out


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, str, dict[str, str]]]]:
    """(family -> type, [(family, sample name, labels)]) of a text exposition."""
    types: dict[str, str] = {}
    samples: list[tuple[str, str, dict[str, str]]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"unparsable sample line: {line}")
        name = m["name"]
        family = name
        if name not in types:
            for suffix in _HIST_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in types:
                    family = name[: -len(suffix)]
                    break
        samples.append((family, name, _labels(m["labels"])))
    return types, samples


def lint(text: str, lint_doc: dict[str, Any], require: set[str]) -> list[str]:
    specs: dict[str, Any] = lint_doc["metrics"]
    budgets: dict[str, int] = lint_doc["label_budgets"]
    types, samples = parse(text)
    problems: list[str] = []
    for family, kind in sorted(types.items()):
        spec = specs.get(family)
        if spec is None:
            problems.append(f"{family}: not in the lint file (unlisted or renamed metric)")
        elif spec["type"] != kind:
            problems.append(f"{family}: type {kind}, the lint file says {spec['type']}")
    series: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    values: dict[str, set[str]] = defaultdict(set)
    reported: set[tuple[str, str]] = set()
    for family, name, labels in samples:
        spec = specs.get(family)
        if spec is None:
            if family not in types:
                problems.append(f"{name}: sample without a TYPE line, not in the lint file")
            continue
        labels = {k: v for k, v in labels.items() if not (k == "le" and name.endswith("_bucket"))}
        want = set(spec["labels"])
        got = set(labels)
        key = tuple(sorted(labels.items()))
        for missing in sorted(want - got):
            if (family, f"-{missing}") not in reported:
                reported.add((family, f"-{missing}"))
                problems.append(f"{family}: series {dict(key)} lacks the label {missing!r}")
        for extra in sorted(got - want):
            if (family, f"+{extra}") not in reported:
                reported.add((family, f"+{extra}"))
                problems.append(f"{family}: series {dict(key)} has the unlisted label {extra!r}")
        for k, v in labels.items():
            if k in want and v == "" and (family, f"={k}") not in reported:
                reported.add((family, f"={k}"))
                problems.append(f"{family}: series {dict(key)} has an empty {k!r}")
            values[k].add(v)
        series[family].add(key)
    for family, spec in sorted(specs.items()):
        if spec["presence"] in require and family not in types:
            problems.append(f"{family}: missing (presence {spec['presence']})")
        if len(series.get(family, ())) > spec["max_series"]:
            problems.append(
                f"{family}: {len(series[family])} series exceed max_series {spec['max_series']}"
            )
    for label, seen in sorted(values.items()):
        budget = budgets.get(label)
        if budget is not None and len(seen) > budget:
            problems.append(f"label {label!r}: {len(seen)} values exceed its budget {budget}")
    return problems


# -- PromQL: the metric names dashboards and alert rules select (ORCH-7022) --

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        if m[2] or m[1].lower() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(m[1])
    return names


def family_of(name: str, lint: dict[str, Any]) -> str | None:
    """The lint family a selected name belongs to (``_bucket``/``_sum``/``_count`` of a
    histogram included), or None."""
    metrics = lint["metrics"]
    if name in metrics:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and metrics.get(base, {}).get("type") == "histogram":
            return base
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scrape", nargs="?", help="a saved /metrics page")
    parser.add_argument("--url", help="scrape this URL instead")
    parser.add_argument("--lint", type=Path, default=LINT_FILE)
    parser.add_argument("--require", default="always", help="presence classes that must show")
    args = parser.parse_args(argv)
    if args.url:
        with urllib.request.urlopen(args.url, timeout=10) as resp:
            text = resp.read().decode("utf-8")
    elif args.scrape:
        text = Path(args.scrape).read_text(encoding="utf-8")
    else:
        parser.error("give a scrape file or --url")
    problems = lint(text, load_lint(args.lint), set(filter(None, args.require.split(","))))
    for p in problems:
        print(f"metrics-lint: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
