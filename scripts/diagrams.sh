#!/usr/bin/env bash
# The diagrams in docs/diagrams: Graphviz sources (*.dot) and the SVG images made from them.
#   scripts/diagrams.sh build   render every source with dot and record each source's sha256
#   scripts/diagrams.sh check   fail if a source has no image, or changed since its image was made
# The check compares the recorded hash of each source, not the images: dot's output differs between
# Graphviz versions, so re-rendering to compare would fail on a machine with another version, and
# the check then needs no Graphviz at all.
set -euo pipefail
cd "$(dirname "$0")/../docs/diagrams"
case "${1:-}" in
build)
  for src in *.dot; do dot -Tsvg "$src" -o "${src%.dot}.svg"; done
  sha256sum -- *.dot > sources.sha256
  echo "diagrams rebuilt: $(ls -- *.dot | wc -l) images" ;;
check)
  for src in *.dot; do
    [ -f "${src%.dot}.svg" ] || { echo "docs/diagrams/$src has no image: run make diagrams"; exit 1; }
    grep -q "  $src\$" sources.sha256 || { echo "docs/diagrams/$src is not recorded: run make diagrams"; exit 1; }
  done
  sha256sum --quiet -c sources.sha256 2>/dev/null \
    || { echo "a diagram source changed since its image was made: run make diagrams"; exit 1; } ;;
*) echo "usage: $0 build|check" >&2; exit 2 ;;
esac
