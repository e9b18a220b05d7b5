#!/usr/bin/env bash
# Measures ftpguard against a direct connection to the same vsftpd, in one
# run: login round trips per second and RETR throughput of a large file, as
# medians of interleaved runs with min..max, and their ratios; beside them
# HAProxy (TCP mode, splice) in front of the same vsftpd as a reference
# relay, and the CPU each relay spends per login and per GiB; RETR and STOR
# of the same file direct, through ftpguard relaying, through ftpguard's
# kernel data path ([passive] data_path = "nftables") and through HAProxy;
# then the memory of 10,000 idle sessions in the ftpguard process.
# Needs what the integration tests need (root, vsftpd) and haproxy for the
# reference (installed here when missing). Knobs: FTPGUARD_BENCH_RUNS (7),
# FTPGUARD_BENCH_LOGINS (320), FTPGUARD_BENCH_MIB (1024),
# FTPGUARD_IDLE_SESSIONS (10000)
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v haproxy >/dev/null 2>&1; then
  echo "== installing haproxy (the reference relay)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null ||
    echo "haproxy could not be installed: the reference relay is left out"
fi
echo "== proxy (in-process fake daemon): control round trip (NOOP), memory per idle session"
(cd ../proxy && go test -run '^$' -bench '^BenchmarkNOOP$' -benchtime 20000x . | grep '^Benchmark' &&
  go test -run '^$' -bench '^BenchmarkIdleSessions$' -benchtime 1x . | grep '^Benchmark')
echo "== limiter: decisions on all cores, memory per tracked key"
(cd ../limiter && go test -run '^$' -bench '^Benchmark(Check|MemoryPerKey)$' -benchtime 1s . | grep '^Benchmark')
echo "== against vsftpd, direct vs through ftpguard (and HAProxy); the stores; 10,000 idle sessions"
FTPGUARD_BENCH=1 go test -tags integration -count=1 -timeout 60m -run '^TestBench' -v . | grep -vE '^(=== RUN|--- PASS|PASS$|ok )'
