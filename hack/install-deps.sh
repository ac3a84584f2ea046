#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, and only those missing.
# Idempotent: with everything installed it only queries dpkg. CI runs it as root; on a
# workstation it uses sudo when not root.
#
#   gcc, libc6-dev           cgo and the RKLLM simulator library (make sim)
#   gcc-aarch64-linux-gnu    cross-compiling the cgo code for linux/arm64 (make build-arm64)
#   valgrind                 the simulator's leak check (make sim-leakcheck)
#   make                     the Makefile itself
#   util-linux, mount        unshare and mount for the real-kubelet e2e (make e2e-kubelet, make e2e)
#   curl                     the demo's request to rkllm-server (make demo)
#   nodejs, npm              the OpenAI Node.js client test (make test-openai-node); only
#                            when the node or npm command is missing (a Node.js from
#                            elsewhere, with its own npm, is used as it is)
set -euo pipefail

packages=(gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross valgrind make util-linux mount curl)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	if ! command -v sudo >/dev/null; then
		echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
		exit 1
	fi
	sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
