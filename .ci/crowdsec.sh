#!/usr/bin/env bash
# Unpack Debian's crowdsec (LAPI + cscli) into a folder of its own for the
# crowdsec package's integration test (go test -tags integration ./crowdsec/).
# The .deb is never installed: its post-install script registers with
# CrowdSec's central API on the internet. Only the libraries it links against
# are apt-installed. Idempotent; run as root. FTPGUARD_CROWDSEC overrides the
# folder (default /opt/ftpguard-test-crowdsec).
set -euo pipefail

dest=${FTPGUARD_CROWDSEC:-/opt/ftpguard-test-crowdsec}
cs_ok() {
  local b
  for b in usr/bin/crowdsec usr/bin/cscli; do
    [ -x "$dest/$b" ] || return 1
    ! ldd "$dest/$b" 2>/dev/null | grep -q 'not found' || return 1
  done
}
if cs_ok; then
  echo "== crowdsec already unpacked in $dest"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "== unpacking crowdsec into $dest"
# Other jobs on the machine may hold apt's locks: wait for them.
apt=(apt-get -o DPkg::Lock::Timeout=600)
"${apt[@]}" update -qq
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && "${apt[@]}" download -qq -o APT::Sandbox::User=root crowdsec)
# Its Depends, first alternatives, version constraints dropped: libraries
# and ca-certificates only (it depends on ca-certificates, libc6, libsqlite3-0).
deps=$(for f in "$debs"/*.deb; do dpkg-deb -f "$f" Depends; done |
  tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep -E '^(lib|ca-certificates$)' | sort -u)
missing=()
for d in $deps; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if ((${#missing[@]})); then
  "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null
fi
rm -rf "$dest" && mkdir -p "$dest"
for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$dest"; done
cs_ok || { echo "crowdsec in $dest is unusable:"; ldd "$dest"/usr/bin/{crowdsec,cscli} | grep 'not found'; exit 1; }
echo "== $("$dest"/usr/bin/crowdsec -version 2>&1 | head -1)"
