#!/usr/bin/env bash
# Check that every relative link in the repository's Markdown files points at
# an existing file or directory (ORCH-6005).
#
#   bash ci/scripts/check_links.sh [REPO_ROOT]
#
# Checked: inline links and images "[text](target)" and reference definitions
# "[name]: target". Skipped: URLs with a scheme (http:, mailto:, ...), pure
# "#anchor" links, absolute paths, and anything inside fenced code blocks or
# inline code. The "#fragment" and "?query" parts of a target are ignored.
# Exits 1 and lists every broken link as "file:line: target".
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$root"

extract_links() {
  # Prints "line<TAB>target" for each candidate link in the file $1.
  awk '
    /^[[:space:]]*(```|~~~)/ { fence = !fence; next }
    fence { next }
    {
      line = $0
      gsub(/`[^`]*`/, "", line)
      if (match(line, /^[[:space:]]*\[[^]]+\]:[[:space:]]*[^[:space:]]+/)) {
        def = substr(line, RSTART, RLENGTH)
        sub(/^[[:space:]]*\[[^]]+\]:[[:space:]]*/, "", def)
        print NR "\t" def
        next
      }
      while (match(line, /\]\([^)]*\)/)) {
        target = substr(line, RSTART + 2, RLENGTH - 3)
        line = substr(line, RSTART + RLENGTH)
        print NR "\t" target
      }
    }
  ' "$1"
}

broken=0
checked=0
while IFS= read -r -d '' file; do
  dir="$(dirname "$file")"
  while IFS=$'\t' read -r lineno target; do
    target="${target#<}"
    target="${target%%>*}"
    target="${target%% *}"            # drop an optional "title"
    case "$target" in
      '' | '#'* | /* | *://* | mailto:* | tel:* | data:*) continue ;;
    esac
    path="${target%%#*}"
    path="${path%%\?*}"
    [[ -n "$path" ]] || continue
    path="${path//%20/ }"
    checked=$((checked + 1))
    if [[ ! -e "$dir/$path" ]]; then
      echo "${file#./}:$lineno: $target"
      broken=$((broken + 1))
    fi
  done < <(extract_links "$file")
done < <(find . \( -name .git -o -name .venv -o -name node_modules -o -name __pycache__ \
  -o -name .pytest_cache -o -name .ruff_cache \) -prune -o -type f -name '*.md' -print0 | sort -z)

if (( broken > 0 )); then
  echo "check_links: $broken broken relative link(s) of $checked checked" >&2
  exit 1
fi
echo "check_links: $checked relative link(s) ok"
