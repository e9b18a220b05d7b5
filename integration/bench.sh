#!/usr/bin/env bash
# Measures ftpguard against a direct connection to the same vsftpd, in one
# run: login round trips per second and RETR throughput of a large file, as
# medians of interleaved runs with min..max, and their ratios.
# Needs what the integration tests need (root, vsftpd). Knobs:
#   FTPGUARD_BENCH_RUNS (7), FTPGUARD_BENCH_LOGINS (300), FTPGUARD_BENCH_MIB (256)
set -euo pipefail
cd "$(dirname "$0")"
FTPGUARD_BENCH=1 go test -count=1 -run '^TestBench' -v . | grep -vE '^(=== RUN|--- PASS|PASS$|ok )'
