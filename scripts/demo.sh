#!/usr/bin/env bash
# make demo: an "external API" over HTTPS in its own network namespace, an
# MCP-server-like process calling it under `sluice run` with a sample policy
# (one call allowed, one denied), then the audit log and the summary.
# Needs root (eBPF, cgroups, network namespaces). Cleans up after itself.
# `sluice run` takes an intercept address, proxy port and pin directory of
# its own, so a node agent on this machine is left alone. The API's
# namespace has no default route (it only answers the root namespace over
# the veth) and a resolv.conf naming its own loopback, so nothing of the
# demo leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo needs root (eBPF hooks, cgroups, network namespaces)" >&2; exit 1; }
for t in ip openssl python3; do command -v $t >/dev/null || { echo "make demo needs $t" >&2; exit 1; }; done

bin=${BIN:-bin/sluice}
ns=sluice-demo-api
veth=sluice-demo0
api_ip=198.18.77.2     # RFC 2544 benchmark range: only ever our own namespace
gw_ip=198.18.77.1
work=$(mktemp -d /tmp/sluice-demo.XXXXXX)
api_pid=

cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
  ip link del "$veth" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "topology: the API in network namespace $ns at $api_ip"
mkdir -p "/etc/netns/$ns"
echo "nameserver 127.0.0.1" > "/etc/netns/$ns/resolv.conf"
ip netns add "$ns"
ip link add "$veth" type veth peer name "${veth}p"
ip link set "${veth}p" netns "$ns"
ip addr add "$gw_ip/24" dev "$veth"; ip link set "$veth" up
ip -n "$ns" link set lo up
ip -n "$ns" addr add "$api_ip/24" dev "${veth}p"; ip -n "$ns" link set "${veth}p" up

step "a throwaway CA and a certificate for api.demo.test"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=demo API CA" \
  -keyout "$work/api-ca.key" -out "$work/api-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api.demo.test" \
  -keyout "$work/api.key" -out "$work/api.csr" 2>/dev/null
printf 'subjectAltName=DNS:api.demo.test,IP:%s\nextendedKeyUsage=serverAuth\n' "$api_ip" > "$work/ext"
openssl x509 -req -in "$work/api.csr" -CA "$work/api-ca.pem" -CAkey "$work/api-ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/api.pem" 2>/dev/null
ip netns exec "$ns" python3 scripts/demo/api.py "$api_ip" "$work/api.pem" "$work/api.key" 2>"$work/api.log" &
api_pid=$!

cat > "$work/config.yaml" <<YAML
ca:
  dir: $work/ca
proxy:
  upstreamCA: $work/api-ca.pem    # Sluice verifies the API against its own CA
YAML
cat > "$work/policy.yaml" <<'YAML'
version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15"]   # the demo API lives in a test range
defaults:
  action: allow
rules:
  - name: no-admin-endpoints
    destinations: {hosts: ["api.demo.test"], paths: ["/admin/**"]}
    action: deny
YAML
step "the policy"
cat "$work/policy.yaml"

for _ in $(seq 50); do ip netns exec "$ns" python3 -c "import socket; socket.create_connection(('$api_ip', 443), 0.2)" 2>/dev/null && break; sleep 0.1; done

step "sluice run -- python3 scripts/demo/mcp_server.py"
"$bin" run --config "$work/config.yaml" --policy "$work/policy.yaml" --audit-log "$work/audit.jsonl" \
  -- python3 scripts/demo/mcp_server.py "$api_ip"

step "the audit log ($work/audit.jsonl)"
cat "$work/audit.jsonl"

step "sluice logs summarize"
"$bin" logs summarize "$work/audit.jsonl"

step "done; cleaning up"
