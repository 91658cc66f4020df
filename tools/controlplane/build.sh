#!/usr/bin/env bash
# Builds etcd and kube-apiserver for the test control plane (testenv/controlplane)
# from this module, which only the Go module proxy feeds, into a cache directory
# keyed by the module's inputs, and prints that directory. A present cache is
# reused; building takes minutes (kube-apiserver), reusing takes nothing.
#
#   build.sh               build when missing, print the directory
#   build.sh --print-dir   print the directory only (it may not exist)
#
# The cache root is $TRIREME_CONTROLPLANE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/trireme/controlplane.
# The key is the sha256 of go.mod, go.sum, etcd/main.go and this script (in that
# order); testenv/controlplane computes the same key to find the binaries.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${TRIREME_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trireme/controlplane}
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/build.sh" | sha256sum | cut -c1-16)
dir=$root/$key

if [ "${1:-}" = --print-dir ]; then
  echo "$dir"
  exit 0
fi

# complete is what testenv/controlplane checks too: the stamp is written last.
complete() { [ -f "$dir/complete" ] && [ -x "$dir/etcd" ] && [ -x "$dir/kube-apiserver" ]; }
if complete; then
  echo "$dir"
  exit 0
fi

mkdir -p "$root"
# One build at a time on this machine: a second make waits, then reuses.
exec 9>"$root/.lock"
flock 9
if complete; then
  echo "$dir"
  exit 0
fi

tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
# Whatever the caller's environment says: this module alone (no go.work), its
# committed go.sum (no silent upgrades), static binaries without local paths.
export GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
export PATH="$PATH:/usr/local/go/bin"
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${k8s_version#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for kv in gitVersion="$k8s_version" gitMajor=1 gitMinor="$minor" gitTreeState=clean; do
  ldflags+=" -X k8s.io/component-base/version.$kv"
done

echo "controlplane: building etcd and kube-apiserver $k8s_version into $dir (kube-apiserver takes minutes the first time)" >&2
start=$SECONDS
go build -ldflags "-s -w" -o "$tmp/etcd" ./etcd
echo "controlplane: etcd built in $((SECONDS - start)) s" >&2
start=$SECONDS
go build -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
echo "controlplane: kube-apiserver built in $((SECONDS - start)) s" >&2
"$tmp/etcd" --version >&2
"$tmp/kube-apiserver" --version >&2
touch "$tmp/complete"
rm -rf "$dir"
mv -T "$tmp" "$dir"
trap - EXIT
echo "$dir"
