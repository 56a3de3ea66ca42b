#!/usr/bin/env bash
# Fails when the protos (the buf workspace in buf.yaml: protos/, without the excluded
# protos/inference) break compatibility with the previous main (buf's FILE rules), so a change
# that would break generated clients cannot land.
#
# Baseline: $BUF_BREAKING_AGAINST if set (any git ref), else
#   - HEAD, when the working tree changes protos/ or buf.yaml (a local run before committing);
#   - HEAD~1 otherwise (CI: the checkout is main with the new commit on top of the previous one).
# With no baseline commit that has protos/ (first commit, or a shallow clone whose parent cannot
# be fetched) there is nothing to compare with: it says so and exits 0.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
buf="${BUF:-$repo_root/.venv/bin/buf}"
if [ ! -x "$buf" ]; then
  buf="$(command -v buf || true)"
fi
if [ -z "$buf" ]; then
  echo "buf_breaking: buf not found (pip install buf-bin, or set BUF=)" >&2
  exit 1
fi

if ! git rev-parse --verify -q HEAD >/dev/null; then
  echo "buf_breaking: no commit yet; nothing to compare with"
  exit 0
fi

if [ -n "${BUF_BREAKING_AGAINST:-}" ]; then
  ref="$BUF_BREAKING_AGAINST"
elif ! git diff --quiet HEAD -- protos buf.yaml || [ -n "$(git ls-files --others --exclude-standard -- protos)" ]; then
  ref=HEAD
else
  ref=HEAD~1
fi

if ! git rev-parse --verify -q "$ref^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
    git fetch -q --deepen=1 2>/dev/null || true
  fi
fi
if ! commit="$(git rev-parse --verify -q "$ref^{commit}")"; then
  echo "buf_breaking: no commit $ref to compare with (first commit or shallow clone); skipping"
  exit 0
fi
if ! git cat-file -e "$commit:protos/ortserve" 2>/dev/null; then
  echo "buf_breaking: $ref ($commit) has no protos/ortserve; nothing to compare with"
  exit 0
fi

echo "buf_breaking: protos of the working tree against $ref ($(git log -1 --format='%h %s' "$commit"))"
# The workspace at the root (buf.yaml) on both sides, so its excludes apply to both.
exec "$buf" breaking . --against ".git#ref=$commit"
