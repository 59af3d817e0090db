#!/usr/bin/env bash
# Archive the root TODO.md once every checkbox in it is checked (ORCH-6007).
#
#   bash ci/scripts/archive_todo.sh [REPO_ROOT]
#
# Moves TODO.md to .docs/DONE/TODO-<YYYY-MM-DD>-<n>.md, where <n> is one more
# than the highest number already archived, and writes a fresh TODO.md
# skeleton. Refuses (exit 1) while any checkbox is open or when TODO.md has no
# checkbox at all.
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
todo="$root/TODO.md"
done_dir="$root/.docs/DONE"

if [[ ! -f "$todo" ]]; then
  echo "archive_todo: no TODO.md at $root" >&2
  exit 1
fi

# A checkbox is a list item "- [ ]" / "* [x]" (any indentation).
box_re='^[[:space:]]*[-*+][[:space:]]+\[[ xX]\]'
open_re='^[[:space:]]*[-*+][[:space:]]+\[ \]'
total=$(grep -cE "$box_re" "$todo" || true)
open_items=$(grep -nE "$open_re" "$todo" || true)

if [[ "$total" -eq 0 ]]; then
  echo "archive_todo: refusing: TODO.md has no checkboxes, nothing to archive" >&2
  exit 1
fi
if [[ -n "$open_items" ]]; then
  count=$(printf '%s\n' "$open_items" | wc -l | tr -d ' ')
  echo "archive_todo: refusing: $count of $total items in TODO.md are still open:" >&2
  printf '%s\n' "$open_items" | sed 's/^/  TODO.md:/' >&2
  exit 1
fi

mkdir -p "$done_dir"
highest=0
shopt -s nullglob
for f in "$done_dir"/TODO-*.md; do
  name="${f##*/}"
  name="${name%.md}"
  n="${name##*-}"
  if [[ "$n" =~ ^[0-9]+$ ]] && (( 10#$n > highest )); then
    highest=$((10#$n))
  fi
done
shopt -u nullglob

stamp="$(date +%Y-%m-%d)"
target="$done_dir/TODO-$stamp-$((highest + 1)).md"
mv "$todo" "$target"
# The archive lives two levels down: keep its relative links pointing at the
# same files (http(s), mailto, anchors and absolute paths are left alone).
sed -E -i 's#\]\(([^)#:/][^):]*)\)#](../../\1)#g' "$target"

cat > "$todo" <<'SKELETON'
# TODO — active tracker

Issue: (link the issue this tracker serves)

## Items

- [ ] (first item, in execution order; cite requirement IDs)

## Progress log

- (date: what changed, where, why)

## Proofs

- (commands that prove the items above)
SKELETON

echo "archive_todo: archived ${target#"$root"/} ($total items); wrote a fresh TODO.md"
