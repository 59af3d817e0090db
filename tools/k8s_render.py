#!/usr/bin/env python3
"""Render ``deploy/kubernetes`` kustomizations without a kustomize binary (ORCH-6220).

No kustomize (or a recent kubectl) installs from PyPI or Debian's packages
(Debian's ``kubernetes-client`` is 1.20, whose kustomize predates ``patches``),
so the tests render the overlays with this module. It implements exactly the
kustomize features the manifests use and refuses every other key; where a
``kubectl`` is on PATH (this project's machine image ships 1.32 with kustomize
v5.5) a test checks that both give identical resources:

* ``resources``: files (multi-document YAML) and directories with a
  ``kustomization.yaml``, in order;
* ``patches`` with an inline ``patch``: a JSON 6902 operation list (``add``,
  ``remove``, ``replace``, ``test``) applied to its ``target`` (kind + name), or
  a strategic-merge document whose only content is ``$patch: delete``;
* ``namespace`` on every namespaced resource;
* ``images`` (``name`` → ``newName`` / ``newTag``) in pod templates.

    python3 tools/k8s_render.py deploy/kubernetes/overlays/gpu     # YAML on stdout
    python3 tools/k8s_render.py --write-rules                      # PrometheusRule from ci/alerts
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "apply_json6902", "prometheus_rule", "render"]

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "ci" / "alerts" / "llama-orch.rules.yml"
RULE_FILE = ROOT / "deploy" / "kubernetes" / "overlays" / "gpu" / "prometheusrule.yaml"
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
POD_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}

Doc = dict[str, Any]


class KustomizeError(Exception):
    """A kustomization uses a feature this renderer does not implement, or is wrong."""


def _key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise KustomizeError(f"path {path} does not exist") from exc
    return node


def apply_json6902(doc: Doc, ops: list[dict[str, Any]]) -> Doc:
    """RFC 6902 ``add``/``remove``/``replace``/``test`` on a copy of ``doc``."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path)
        parent, last = _parent(out, parts, path), parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if not 0 <= index <= len(parent):
                    raise KustomizeError(f"add: index out of range at {path}")
                parent.insert(index, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace", "test"):
            try:
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
            except (KeyError, IndexError, ValueError) as exc:
                raise KustomizeError(f"{kind}: path {path} does not exist") from exc
            if kind == "test":
                if current != op["value"]:
                    raise KustomizeError(f"test failed at {path}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"unsupported JSON 6902 op {kind!r}")
    return out


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _patch(docs: list[Doc], entry: dict[str, Any], where: Path) -> list[Doc]:
    if set(entry) - {"patch", "target"} or "patch" not in entry:
        raise KustomizeError(f"{where}: only inline `patch` (+ `target`) is supported: {entry}")
    body = yaml.safe_load(entry["patch"])
    if isinstance(body, list):
        target = entry.get("target") or {}
        if set(target) != {"kind", "name"}:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs target kind and name")
        key = (target["kind"], target["name"])
        hits = [i for i, d in enumerate(docs) if _key(d) == key]
        if len(hits) != 1:
            raise KustomizeError(f"{where}: patch target {key} matches {len(hits)} resources")
        docs[hits[0]] = apply_json6902(docs[hits[0]], body)
        return docs
    if (
        isinstance(body, dict)
        and body.get("$patch") == "delete"
        and set(body) == {"apiVersion", "kind", "metadata", "$patch"}
    ):
        key = _key(body)
        kept = [d for d in docs if _key(d) != key]
        if len(kept) != len(docs) - 1:
            raise KustomizeError(f"{where}: delete patch for {key} matches nothing")
        return kept
    raise KustomizeError(f"{where}: strategic-merge patches other than $patch: delete")


def _images(doc: Doc, images: list[dict[str, str]]) -> None:
    if doc["kind"] not in POD_TEMPLATE_KINDS:
        return
    pod = doc["spec"]["template"]["spec"]
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        name, _, tag = c["image"].partition(":")
        for img in images:
            if img["name"] == name:
                c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"


def render(path: Path) -> list[Doc]:
    """The resources of the kustomization in directory ``path``."""
    kfile = path / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported keys {sorted(unknown)}")
    docs: list[Doc] = []
    for res in spec.get("resources", []):
        target = (path / res).resolve()
        docs += render(target) if target.is_dir() else _load(target)
    seen: set[tuple[str, str]] = set()
    for d in docs:
        if _key(d) in seen:
            raise KustomizeError(f"{kfile}: {_key(d)} defined twice")
        seen.add(_key(d))
    for entry in spec.get("patches", []):
        docs = _patch(docs, entry, kfile)
    for d in docs:
        if "namespace" in spec and d["kind"] not in CLUSTER_SCOPED:
            d["metadata"]["namespace"] = spec["namespace"]
        _images(d, spec.get("images", []))
    return docs


def prometheus_rule() -> str:
    """``prometheusrule.yaml``: the alert rules of ``ci/alerts`` as a PrometheusRule."""
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "llama-orch",
            "labels": {"app.kubernetes.io/part-of": "llama-orch"},
        },
        "spec": {"groups": rules["groups"]},
    }
    head = (
        "# Generated by `python3 tools/k8s_render.py --write-rules` from "
        "ci/alerts/llama-orch.rules.yml; do not edit.\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, help="a kustomization directory")
    parser.add_argument("--write-rules", action="store_true", help="regenerate the rule file")
    args = parser.parse_args(argv)
    if args.write_rules:
        RULE_FILE.write_text(prometheus_rule(), encoding="utf-8")
        print(f"wrote {RULE_FILE.relative_to(ROOT)}")
        return 0
    if args.path is None:
        parser.error("give a kustomization directory or --write-rules")
    try:
        docs = render(args.path)
    except KustomizeError as exc:
        print(f"k8s_render: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
