#!/usr/bin/env bash
# rsp quickstart: a PKI, a registrar, two pool elements and a pool user on this machine,
# over mutual TLS, every operation audited. Run from the repository: ./quickstart.sh
# It works in ./quickstart/ (made anew each run) and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust 1.95 (rustup) first" >&2; exit 1; }

# rsp links libsctp (SCTP, the RFCs' transport, used where the kernel has it).
if [ ! -e /usr/include/netinet/sctp.h ]; then
  echo "== installing libsctp-dev (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends libsctp-dev
fi

echo "== building rsp (first build takes a few minutes)"
cargo build --workspace --bins --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
# Plain paths, not shell functions: `$!` must be the program's own PID so that the
# cleanup below stops it.
rsp_pki="$bin/rsp-pki" enrpd="$bin/enrpd" rsp="$bin/rsp"

rm -rf quickstart && mkdir quickstart && cd quickstart
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== 1. a PKI for the trust domain acme.test (rsp-pki)"
"$rsp_pki" init --trust-domain acme.test
"$rsp_pki" issue registrar enrp-1 --dns localhost --ip 127.0.0.1
"$rsp_pki" issue pe echo-1
"$rsp_pki" issue pe echo-2
"$rsp_pki" issue pu client-1

echo "== 2. a registrar (enrpd): store, default grants, admin token; ASAP over TLS on 3864, admin API on 8443"
"$enrpd" init --pki pki --data data | tee init.out
token=$(sed -n 's/.*admin token.*: \(rsp_[0-9a-f_]*\).*/\1/p' init.out)
"$enrpd" run --data data --asap-listen 127.0.0.1:3864 --admin-listen 127.0.0.1:8443 --allow-loopback > enrpd.out 2> enrpd.log &
pids+=($!)
for _ in $(seq 100); do grep -q serving enrpd.out 2>/dev/null && break; sleep 0.1; done
cat enrpd.out

echo "== 3. two pool elements join the pool 'echo' (round robin)"
export RSP_CA=pki/ca.pem RSP_REGISTRAR=127.0.0.1:3864
"$rsp" pe --pool echo --serve echo --cert pki/pe-echo-1.pem > pe1.out 2> pe1.log &
pids+=($!); pe1=$!
"$rsp" pe --pool echo --serve echo --cert pki/pe-echo-2.pem > pe2.out 2> pe2.log &
pids+=($!)
for _ in $(seq 100); do grep -q registered pe1.log pe2.log 2>/dev/null && [ "$(grep -l registered pe1.log pe2.log | wc -l)" = 2 ] && break; sleep 0.1; done
cat pe1.out pe2.out

echo "== 4. a pool user resolves the pool and talks to it"
"$rsp" resolve echo --cert pki/pu-client-1.pem
printf 'hello\nreliable server pooling\n' | "$rsp" pu echo --cert pki/pu-client-1.pem

if command -v curl >/dev/null; then
  echo "== the admin API (curl, with the admin token): the pool and its live PEs"
  curl -sS --cacert pki/ca.pem -H "Authorization: Bearer $token" \
    https://127.0.0.1:8443/v1/namespaces/default/pools/echo
  echo
fi

echo "== 5. one PE dies; the pool user fails over to the other"
kill "$pe1"
printf 'still here?\n' | "$rsp" pu echo --cert pki/pu-client-1.pem

echo "== 6. the audit log: every operation, hash-chained"
sleep 0.2
"$enrpd" audit verify --data data
echo "done: everything ran in $PWD"
