#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end libraries from the npm registry at pinned exact versions.
#
#   agl/dashboard/vendor.sh            # needs npm and network; rewrites agl/dashboard/static/vendor/
#
# `npm pack` fetches each tarball and checks it against the registry's integrity hash; only the browser-ready
# dist files and each package's LICENSE are copied. The sha256 of every copied file is printed (and written to
# vendor/SHA256SUMS) so a review can compare the committed bytes with a fresh run.
set -euo pipefail

PREACT=11.2.0
HTM=3.1.1
UPLOT=1.6.32
DIFF=9.0.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "preact@$PREACT" "htm@$HTM" "uplot@$UPLOT" "diff@$DIFF" >/dev/null
for tarball in *.tgz; do
    mkdir "${tarball%.tgz}"
    tar xzf "$tarball" -C "${tarball%.tgz}"
done

rm -rf "$out"
mkdir -p "$out"
copy() {  # copy <package dir> <file inside the package> <name in vendor/>
    cp "$work/$1/package/$2" "$out/$3"
}
# File names carry the version, so the server can let browsers cache them for good (index.html names them).
copy "preact-$PREACT" dist/preact.mjs "preact-$PREACT.mjs"
copy "preact-$PREACT" hooks/dist/hooks.mjs "preact-hooks-$PREACT.mjs"
copy "preact-$PREACT" LICENSE LICENSE.preact
copy "htm-$HTM" dist/htm.mjs "htm-$HTM.mjs"
copy "htm-$HTM" LICENSE LICENSE.htm
copy "uplot-$UPLOT" dist/uPlot.esm.js "uPlot-$UPLOT.esm.js"
copy "uplot-$UPLOT" dist/uPlot.min.css "uPlot-$UPLOT.min.css"
copy "uplot-$UPLOT" LICENSE LICENSE.uplot
copy "diff-$DIFF" dist/diff.min.js "diff-$DIFF.min.js"
copy "diff-$DIFF" LICENSE LICENSE.diff
# The source maps are not shipped: drop the comments pointing at them (browsers would ask for them and get 404s).
sed -i '/^\/\/# sourceMappingURL=/d' "$out"/*.mjs "$out"/*.js

cat >"$out/VERSIONS" <<VERSIONS
preact $PREACT
htm $HTM
uplot $UPLOT
diff $DIFF
VERSIONS

cd "$out"
sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS.tmp
mv SHA256SUMS.tmp SHA256SUMS
cat SHA256SUMS
