#!/usr/bin/env bash
# Builds one release binary for a target platform with the flags the images use. The
# Dockerfiles under images/ and `make build-arm64` both call it, so what CI cross-compiles
# is exactly what the images hold.
#
#   hack/build-binary.sh BINARY GOOS GOARCH OUTDIR
#
# BINARY is manager, rknpu-device-plugin, rkllm-gateway or rkllm-server. VERSION
# (environment) is stamped into main.version (default: dev). manager,
# rknpu-device-plugin and rkllm-gateway are static (no cgo);
# rkllm-server uses cgo against glibc (it dlopens librkllmrt.so at run time, so nothing of
# Rockchip's is linked): CC defaults to the Debian cross compiler for GOARCH when it is not
# the build machine's architecture (aarch64-linux-gnu-gcc, x86_64-linux-gnu-gcc).
set -euo pipefail

if [[ $# -ne 4 ]]; then
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
fi
binary=$1 goos=$2 goarch=$3 out=$4
version=${VERSION:-dev}
ldflags="-s -w -X main.version=${version}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "${out}"
case "${binary}" in
manager | rknpu-device-plugin | rkllm-gateway)
	CGO_ENABLED=0 GOOS=${goos} GOARCH=${goarch} go build -trimpath -ldflags "${ldflags}" -o "${out}/${binary}" "./cmd/${binary}"
	;;
rkllm-server)
	if [[ -z "${CC:-}" && "${goarch}" != "$(go env GOHOSTARCH)" ]]; then
		case "${goarch}" in
		arm64) CC=aarch64-linux-gnu-gcc ;;
		amd64) CC=x86_64-linux-gnu-gcc ;;
		*)
			echo "build-binary: no default cross compiler for ${goarch}; set CC" >&2
			exit 2
			;;
		esac
	fi
	if [[ -n "${CC:-}" ]] && ! command -v "${CC}" >/dev/null; then
		echo "build-binary: ${CC} is missing (Debian: gcc-aarch64-linux-gnu or gcc-x86-64-linux-gnu; make deps)" >&2
		exit 1
	fi
	CC=${CC:-gcc} CGO_ENABLED=1 GOOS=${goos} GOARCH=${goarch} go build -trimpath -ldflags "${ldflags}" -o "${out}/${binary}" "./cmd/${binary}"
	;;
*)
	echo "build-binary: unknown binary '${binary}'; choose manager, rknpu-device-plugin, rkllm-gateway or rkllm-server" >&2
	exit 2
	;;
esac
echo "build-binary: ${out}/${binary} (${goos}/${goarch}, ${version})" >&2
