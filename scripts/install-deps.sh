#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, only when missing.
# The product itself programs the kernel from Go; these tools are used by tests
# to check the state the product left (ip, nft) and by the live tests.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# The Docker monitor's tests run a private dockerd (Debian's docker.io).
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# The web page's test loads it in a headless browser (node/web_test.go).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]} and not root; install them or run as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go mod download
