#!/usr/bin/env bash
# Measures ftpguard against a direct connection to the same vsftpd, in one
# run: login round trips per second and RETR throughput of a large file, as
# medians of interleaved runs with min..max, and their ratios.
# Needs what the integration tests need (root, vsftpd). Knobs:
#   FTPGUARD_BENCH_RUNS (7), FTPGUARD_BENCH_LOGINS (300), FTPGUARD_BENCH_MIB (256)
set -euo pipefail
cd "$(dirname "$0")"
echo "== proxy: control round trip (NOOP) and memory per idle session"
(cd ../proxy && go test -run '^$' -bench '^BenchmarkNOOP$' -benchtime 20000x . | grep '^Benchmark' &&
  FTPGUARD_IDLE_SESSIONS=10000 go test -run '^$' -bench '^BenchmarkIdleSessions$' -benchtime 1x . | grep '^Benchmark')
echo "== limiter: decisions on all cores, memory per tracked key"
(cd ../limiter && go test -run '^$' -bench '^Benchmark(Check|MemoryPerKey)$' -benchtime 1s . | grep '^Benchmark')
echo "== against vsftpd, direct vs through ftpguard"
FTPGUARD_BENCH=1 go test -count=1 -run '^TestBench' -v . | grep -vE '^(=== RUN|--- PASS|PASS$|ok )'
