#!/usr/bin/env bash
# Fetch the two JavaScript libraries bertviz needs (d3 v5, jQuery 3) from the npm registry, so the
# studio's attention views render with no CDN: point MTBERT_BERTVIZ_JS at DEST.
# CDNs are unreachable here but the npm registry is; `npm pack` verifies each tarball against the
# registry's integrity hash, and the sha256 checks below pin the exact files we tested with.
# Usage: scripts/fetch_js.sh [DEST]   (default: vendor-js, git-ignored)
set -euo pipefail

DEST=${1:-vendor-js}
D3_VERSION=5.16.0
JQUERY_VERSION=3.7.1
D3_SHA256=5dbe924b3847df010f0b8572dd6ef42ea87d6370eeff72b13ea236247412a53c
JQUERY_SHA256=fc9a93dd241f6b045cbff0481cf4e1901becd0e12fb45166a8f17f95823f0b1a

command -v npm >/dev/null || { echo "fetch_js.sh: npm is needed (apt-get install -y npm)" >&2; exit 1; }
mkdir -p "$DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "d3@$D3_VERSION" "jquery@$JQUERY_VERSION" >/dev/null)
tar -xzf "$work/d3-$D3_VERSION.tgz" -C "$work" package/dist/d3.min.js
cp "$work/package/dist/d3.min.js" "$DEST/d3.min.js"
rm -rf "$work/package"
tar -xzf "$work/jquery-$JQUERY_VERSION.tgz" -C "$work" package/dist/jquery.min.js
cp "$work/package/dist/jquery.min.js" "$DEST/jquery.min.js"

check() {
  local file=$1 want=$2 got
  got=$(sha256sum "$file" | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$got" != "$want" ]; then
    echo "fetch_js.sh: $file has sha256 $got, expected $want" >&2
    rm -f "$file"
    exit 1
  fi
  echo "$file  sha256 $got"
}
check "$DEST/d3.min.js" "$D3_SHA256"
check "$DEST/jquery.min.js" "$JQUERY_SHA256"
echo "done: export MTBERT_BERTVIZ_JS=$(cd "$DEST" && pwd)"
