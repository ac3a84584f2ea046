#!/usr/bin/env bash
# Instructions per operation of the server's per-token micro-benchmarks, counted by
# valgrind's callgrind: repeatable whatever else the machine runs, unlike their times.
# Each benchmark runs twice (N and 2N iterations); the difference over N is what one
# operation costs, its share of garbage collection included. One thread, no
# asynchronous preemption: callgrind serialises threads and cannot follow Go's
# preemption signals, nor RDTSCP.
#
# Usage: hack/bench-instructions.sh [N]   (docs/benchmarks.md, "Where the per-token time goes")
set -euo pipefail
n=${1:-4000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v valgrind >/dev/null || { echo "valgrind is missing: run make deps" >&2; exit 1; }

# package benchmark-regexp description
benches=(
	"./server/workerproto BenchmarkDeliverySend$ worker: encode a token's delivery and write its frame"
	"./server/workerproto BenchmarkDeliveryReceive$ supervisor: read and decode a delivery frame"
	"./server/rkllmrpc BenchmarkTokenNotification$ supervisor: rkllm.result notification of a token, encoded"
	"./server/outbuf BenchmarkSendWritten/goroutine$ supervisor: a client's output buffer, Send to written by its goroutine (HTTP)"
	"./server/outbuf BenchmarkSendWritten/now$ supervisor: a client's output buffer, written by Send (Unix socket)"
	"./server/rkllmrpc BenchmarkRunToQueue$ supervisor: a short streamed rkllm.run, socket line to the queue"
	"./server/openai BenchmarkChatToQueue$ supervisor: a short streamed chat, HTTP request to the queue (the template rendered)"
)
count() { # binary bench iterations -> instructions
	GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off GOMAXPROCS=1 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" \
		"$1" -test.run '^$' -test.bench "^$2" -test.benchtime "$3x" >/dev/null 2>"$tmp/err" ||
		{ cat "$tmp/err" >&2; exit 1; }
	sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$tmp/err"
}
printf '| stage | benchmark | instructions/op |\n|---|---|---|\n'
for b in "${benches[@]}"; do
	read -r pkg name desc <<<"$b"
	bin="$tmp/$(basename "$pkg").test"
	[ -x "$bin" ] || go test -c -o "$bin" "$pkg"
	one=$(count "$bin" "$name" "$n")
	two=$(count "$bin" "$name" $((2 * n)))
	printf '| %s | `%s` | %d |\n' "$desc" "${name%$}" $(((two - one) / n))
done
