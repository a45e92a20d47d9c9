#!/usr/bin/env bash
# make bench-peers: Sluice side by side with nginx (root; not run by CI).
#
# One run builds, on this machine only:
#   - a Go HTTPS upstream (scripts/benchpeers, HTTP/1.1 and h2) in a network
#     namespace of its own at 198.19.254.2:443 (RFC 2544 benchmark range,
#     reached over a veth; the namespace has no default route);
#   - nginx (Debian) as a TLS-terminating, re-encrypting proxy on 127.0.0.1
#     with upstream keepalive, upstream certificate verification and an
#     access log;
#   - Sluice transparent (`sluice run -- CLIENT`, the client's connects to the
#     upstream redirected by the hooks) and Sluice explicit (`sluice proxy`),
#     both decrypting and writing the JSON audit log;
# and measures, over ROUNDS interleaved rounds (every test runs each mode
# in turn before the next test), the median of:
#   keep-alive HTTP/1.1 (wrk) req/s, p50, p99 at each of CONNS connections,
#   the proxy's CPU per request (utime+stime of its processes from
#   /proc/PID/stat) and the upstream's (up_cpu_us_per_req: in the direct
#   column, what a Go net/http HTTPS server alone spends per request),
#   the mean line its log got (log_bytes_per_line: Sluice's JSON audit
#   line, nginx's combined access-log line),
#   new TLS connections per second (wrk, Connection:
#   close; with dumpcap and tshark also the share of those handshakes
#   that resumed a session and that were TLS 1.3), h2 req/s (h2load), one
#   large download in MB/s (curl), KiB of proxy memory per idle TLS
#   connection (HTTP/1.1, and HTTP/2: idle-h2), and h1 at 32 connections through the explicit proxy (a Go
#   client: wrk and h2load cannot use a proxy).
# Every figure is also printed as a ratio to nginx's figure of the same run.
#
# Missing tools: the apt-get line is printed; BENCH_INSTALL=1 runs it (and
# installs tshark, which the newconn test's handshake shares need).
# Settings (environment): BENCH_ROUNDS (3), BENCH_DURATION seconds per
# measurement (5), BENCH_CONNS ("8 32 64 256 512"), BENCH_STREAM_MB (1024),
# BENCH_IDLE connections (10000, lowered to what RLIMIT_NOFILE's hard limit
# lets Sluice hold: two descriptors per connection and 1024 spare),
# BENCH_TESTS (all of: h1 newconn h2 together stream idle idle-h2 explicit;
# and soak, which only runs when named), BIN (the Sluice run as
# transparent and explicit: bin/sluice, built first; any executable, a
# wrapper script that execs Sluice too).
# together: nginx, Sluice transparent and base (BENCH_BASE) at the same
# time, each with its own client (wrk at each of BENCH_CONNS, then h2load),
# for CPU per request measured in the same seconds by all (see
# together_run): the rows together-h1/cN and together-h2/c32m10.
# soak: Sluice transparent under the Go client at half the peak rate that
# client reaches through it (measured first, BENCH_DURATION seconds), for
# BENCH_SOAK seconds (600); every BENCH_SOAK_EVERY seconds (30) the proxy's
# RSS, goroutines (go_goroutines from its --metrics listener), CPU and
# requests are sampled (printed as they come, kept in soak.tsv). Reported:
# RSS and goroutine growth from the first sample after one minute to the
# last, and CPU per request in the first and the last interval.
# BENCH_BASE=path/to/an/older/sluice adds a "base" mode: that binary
# transparent, interleaved with the others, for before/after figures of a
# change within one run (column T×base).
# nginx speaks TLS 1.2 and 1.3 on both sides (BENCH_NGINX_PROTOCOLS,
# "TLSv1.2 TLSv1.3"; nginx 1.22's own default stops at TLS 1.2).
# BENCH_AUDIT_FLUSH (100ms): Sluice's audit.flushInterval and nginx's
# access_log flush= (with buffer=64k), so both write their logs in
# batches; 0 has both write each line at once.
# BENCH_WARMUP seconds (2): before each wrk and h2load measurement its
# client runs this long at the same concurrency, unmeasured, inside the
# same `sluice run` for Sluice (wrk also until it had 20 answers per
# connection: warm_up). Every proxy then starts the measured seconds with
# its upstream connections open: nginx's keepalive pool is open from its
# first test on, while a `sluice run` per measurement would otherwise
# dial, and the upstream answer, as many TLS handshakes as the client has
# connections inside the measured seconds and CPU (at 256 and 512
# connections some 10% of Sluice's CPU per request, README). The
# client's own connections to the proxy are new in the measured seconds
# for every mode alike. 0: no warm-up.
# BENCH_KEEP=DIR: every measurement's figures (results: test mode metric
# value round, one line per round) and each client's own output (clients.txt)
# are copied to DIR on exit, not only the medians printed.
# BENCH_PROFILE=DIR: Sluice transparent runs a profiling build (-tags pprof)
# and a CPU profile of each of its wrk/h2load measurements lands in DIR
# (go tool pprof -top DIR/h1-c32-r1.pb.gz), with the time its goroutines
# waited for contended locks (DIR/h1-c32-r1.mutex.pb.gz, one wait in 20
# sampled), and with BENCH_TRACE=1 a Go execution trace of its first 2
# seconds (DIR/h1-c32-r1.trace: go tool trace FILE, or go tool trace
# -pprof=sched FILE for where goroutines waited to run; off by default:
# the tracer's own work shows in the CPU profile, which make pgo reads);
# each idle measurement leaves a
# snapshot in DIR/idle[-h2]-MODE-rN: the processes' /proc status and
# smaps_rollup, and for Sluice its heap profile, MemStats and goroutines.
# Everything it creates (namespace, veth, processes by PID, files) is
# removed on exit, also on failure or Ctrl-C.
set -euo pipefail

ticks() { # summed utime+stime of the given pids
  local s=0 p
  for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$s"
}
# warm_up CMD...: runs the warm-up of a wrk or h2load command, its
# output dropped; any other command has none. The same client with the
# same options (a proxy pools upstream connections by what the client's
# TLS offered, ALPN), for BENCH_WARMUP seconds; wrk's goes on
# until one of its threads also had 20 answers per connection (a Lua
# script ends the process: wrk.thread:stop() would leave it waiting out
# its -d), so that on a loaded machine, where the handshakes take longer
# than that, every connection still had its upstream one.
warm_up() {
  local w=${BENCH_WARMUP:-2} a=() prev= arg c=1 t=1 lua=
  [ "$w" != 0 ] || return 0
  case ${1##*/} in wrk | h2load) ;; *) return 0 ;; esac
  for arg in "${@:2}"; do
    case $prev in
      -c) c=$arg ;;
      -t) t=$arg ;;
      -d) arg=$((w + 60))s ;; # wrk: the script ends it sooner
      -D) arg=$w ;;           # h2load
    esac
    a+=("$arg")
    prev=$arg
  done
  if [ "${1##*/}" = wrk ]; then
    lua=$(mktemp --suffix=.lua)
    printf 'local n, t0 = 0, os.time()\nfunction response()\n  n = n + 1\n  if n >= %d and os.time() - t0 > %d then os.exit(0) end\nend\n' \
      $((c * 20 / t)) "$w" >"$lua"
    a=(-s "$lua" "${a[@]}")
  fi
  timeout $((w + 90)) "$1" "${a[@]}" >/dev/null 2>&1 || true
  [ -z "$lua" ] || rm -f "$lua"
}

# Inside `sluice run`: warm up, then run the client and print the CPU
# ticks its parent (the sluice process, which holds the proxy) and the
# upstream's processes (BENCH_UP_PIDS) spent meanwhile.
if [ "${1:-}" = __inner ]; then
  shift
  warm_up "$@"
  [ -z "${BENCH_WARMED:-}" ] || : >"$BENCH_WARMED" # run_client's profile starts
  # shellcheck disable=SC2086
  t0=$(ticks "$PPID") u0=$(ticks ${BENCH_UP_PIDS:-})
  rc=0
  "$@" || rc=$?
  echo "PROXY_CPU_TICKS $(($(ticks "$PPID") - t0))"
  # shellcheck disable=SC2086
  echo "UPSTREAM_CPU_TICKS $(($(ticks ${BENCH_UP_PIDS:-}) - u0))"
  exit $rc
fi

cd "$(dirname "$0")/.."
self=$PWD/scripts/bench-peers.sh
[ "$(id -u)" = 0 ] || { echo "make bench-peers needs root (network namespace, eBPF hooks of sluice run)" >&2; exit 1; }
missing=()
for t in nginx wrk h2load curl openssl ip awk timeout; do command -v $t >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt="apt-get install -y nginx-light wrk nghttp2-client curl openssl iproute2"
  if [ "${BENCH_INSTALL:-0}" = 1 ]; then
    echo "installing: $apt"; $apt
  else
    echo "make bench-peers needs: ${missing[*]}; install them with:" >&2
    echo "  $apt" >&2
    echo "(or BENCH_INSTALL=1 make bench-peers)" >&2
    exit 1
  fi
fi
# dumpcap and tshark are optional: without them the share of resumed and
# TLS 1.3 handshakes of the newconn test is not measured.
if ! command -v dumpcap >/dev/null || ! command -v tshark >/dev/null; then
  if [ "${BENCH_INSTALL:-0}" = 1 ]; then
    echo "installing: apt-get install -y tshark"
    DEBIAN_FRONTEND=noninteractive apt-get install -y tshark
  else
    echo "note: without dumpcap and tshark (apt-get install -y tshark) the newconn test does not measure resumed and TLS 1.3 handshakes" >&2
  fi
fi

rounds=${BENCH_ROUNDS:-3}
dur=${BENCH_DURATION:-5}
conns=${BENCH_CONNS:-"8 32 64 256 512"}
stream_mb=${BENCH_STREAM_MB:-1024}
tests=${BENCH_TESTS:-"h1 newconn h2 together stream idle idle-h2 explicit"}
bin=$(realpath -m "${BIN:-bin/sluice}")
base_bin=${BENCH_BASE:-}
tmodes=transparent
if [ -n "$base_bin" ]; then
  base_bin=$(realpath "$base_bin")
  tmodes="transparent base"
fi
hard=$(ulimit -Hn)
ulimit -n "$hard"
max_conns=$(((hard - 1024) / 2 - 100))
idle_n=${BENCH_IDLE:-10000}
if [ "$idle_n" -gt "$max_conns" ]; then
  echo "idle connections: $idle_n lowered to $max_conns (open-file hard limit $hard)" >&2
  idle_n=$max_conns
fi
# A snapshot (BENCH_PROFILE) of Sluice transparent reads its pprof listener
# from inside the workload, through the proxy: leave it room.
if [ -n "${BENCH_PROFILE:-}" ] && [ "$idle_n" -gt $((max_conns - 8)) ]; then
  idle_n=$((max_conns - 8))
fi
# nginx keeps as many idle upstream connections as requests can be in
# flight at once: the most wrk connections, and h2load's 32 x 10 streams
# (with fewer, BENCH_CONNS=32 had nginx re-dial, with a full handshake,
# most of its h2 requests' upstream connections).
max_wrk_conns=320
for c in $conns; do [ "$c" -gt "$max_wrk_conns" ] && max_wrk_conns=$c; done

ns=sluice-bp-$$
veth=sbp$$
up_ip=198.19.254.2
gw_ip=198.19.254.1
up_port=443
ng_port=$((18000 + $$ % 1000))
ex_port=$((19000 + $$ % 1000))
work=$(mktemp -d /tmp/sluice-bench-peers.XXXXXX)
results=$work/results
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip link del "$veth" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then
    mkdir -p "$BENCH_KEEP"
    cp "$results" "$work/clients.txt" "$work/soak.tsv" "$BENCH_KEEP/" 2>/dev/null || true
  fi
  rm -rf "/etc/netns/$ns" "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ip -4 -o addr | grep -q " 198\.19\.254\."; then
  echo "198.19.254.0/24 is in use on this machine; bench-peers needs it for its upstream" >&2
  exit 1
fi

echo "building bin/sluice and the benchpeers helper" >&2
env -u MAKEFLAGS -u MAKEOVERRIDES make -s build BIN=bin/sluice # a BIN given (a wrapper, an older binary) is run as it is, from make bench-peers BIN=… too
go build -o "$work/benchpeers" ./scripts/benchpeers
profile_dir=${BENCH_PROFILE:-}
pprof_addr=127.0.0.1:$((17000 + $$ % 1000))
idle_pprof_addr=127.0.0.1:$((20000 + $$ % 1000))
if [ -n "$profile_dir" ]; then
  mkdir -p "$profile_dir"
  go build -tags pprof -o "$work/sluice-pprof" ./cmd/sluice
  bin=$work/sluice-pprof
fi

echo "topology: upstream in namespace $ns at $up_ip:$up_port" >&2
mkdir -p "/etc/netns/$ns"
echo "nameserver 127.0.0.1" > "/etc/netns/$ns/resolv.conf"
ip netns add "$ns"
ip link add "$veth" type veth peer name "${veth}p"
ip link set "${veth}p" netns "$ns"
ip addr add "$gw_ip/24" dev "$veth"
ip link set "$veth" up
ip -n "$ns" link set lo up
ip -n "$ns" addr add "$up_ip/24" dev "${veth}p"
ip -n "$ns" link set "${veth}p" up
# The route to the upstream must lead into our namespace before any load runs.
ip route get "$up_ip" | grep -q "dev $veth" || { echo "$up_ip is not routed to $veth" >&2; exit 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=bench CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
for name in upstream nginx; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api.bench.test" \
    -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:api.bench.test,IP:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$up_ip" > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 1 -extfile "$work/$name.ext" -out "$work/$name.pem" 2>/dev/null
done

ip netns exec "$ns" sh -c "ulimit -n $hard; exec $work/benchpeers upstream -listen $up_ip:$up_port -cert $work/upstream.pem -key $work/upstream.key" \
  >"$work/upstream.log" 2>&1 &
up_pid=$!
pids+=("$up_pid")

audit_flush=${BENCH_AUDIT_FLUSH:-100ms}
nginx_buffer=""
sluice_flush=""
if [ "$audit_flush" != 0 ]; then
  nginx_buffer=" combined buffer=64k flush=$audit_flush"
  sluice_flush="  flushInterval: $audit_flush"
fi
mkdir -p "$work/nginx"
# TLS 1.3 on both of nginx's sides, as Sluice speaks it and nginx 1.23.4+
# does by default (1.22's default stops at TLS 1.2): a TLS 1.2 client
# resuming a session does no key exchange at all (an abbreviated
# handshake), one resuming in TLS 1.3 an (EC)DHE (psk_dhe_ke, the only
# mode OpenSSL's and Go's clients offer), so newconn would compare
# different handshakes. BENCH_NGINX_PROTOCOLS="TLSv1.2" measures
# against 1.22's TLS 1.2 default instead.
nginx_protocols=${BENCH_NGINX_PROTOCOLS:-"TLSv1.2 TLSv1.3"}
cat > "$work/nginx.conf.in" <<NGINX
worker_processes auto;
worker_rlimit_nofile $hard;
daemon off;
pid $work/nginx/nginx-__PORT__.pid;
error_log $work/nginx/error.log warn;
events { worker_connections $(((hard - 100) / 2)); }
http {
  access_log $work/nginx/access.log$nginx_buffer;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream up {
    server $up_ip:$up_port;
    keepalive $max_wrk_conns;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:__PORT__ ssl http2;
    ssl_certificate $work/nginx.pem;
    ssl_certificate_key $work/nginx.key;
    ssl_protocols $nginx_protocols;
    location / {
      proxy_pass https://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_name api.bench.test;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols $nginx_protocols;
      proxy_max_temp_file_size 0;
    }
  }
}
NGINX
# start_nginx PORT and start_explicit PORT start a proxy and set
# started_pid; stop_pid PID ends one of them.
start_nginx() {
  sed "s/__PORT__/$1/g" "$work/nginx.conf.in" > "$work/nginx-$1.conf"
  nginx -c "$work/nginx-$1.conf" -e "$work/nginx/error.log" &
  started_pid=$!
  pids+=("$started_pid")
}
start_explicit() { # port [pprof listener]
  SLUICE_PPROF=${2:-} "$bin" proxy --listen "127.0.0.1:$1" --config "$work/config.yaml" --policy "$work/policy.yaml" \
    >>"$work/explicit.log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
}
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
start_nginx "$ng_port"
ng_pid=$started_pid

cat > "$work/config.yaml" <<YAML
ca:
  dir: $work/sluice-ca
proxy:
  upstreamCA: $work/ca.pem
  maxConnections: $max_conns
  maxConnectionsPerWorkload: $max_conns
audit:
  file: $work/audit.jsonl
$sluice_flush
YAML
cat > "$work/policy.yaml" <<'YAML'
version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15"]   # the bench upstream lives in a test range
defaults:
  action: allow
YAML
start_explicit "$ex_port"
ex_pid=$started_pid

wait_port() { # host port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2
  exit 1
}
wait_port "$up_ip" "$up_port"
wait_port 127.0.0.1 "$ng_port"
wait_port 127.0.0.1 "$ex_port"
sluice_ca=$work/sluice-ca/ca.crt

proc_pids() { # the proxy's processes: pid and its children
  echo "$1"
  pgrep -P "$1" || true
}
to_us() { # a wrk latency (1.23ms, 850.00us, 1.01s) in µs
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}
keep_output() { # what client output: kept for BENCH_KEEP
  printf '=== %s\n%s\n' "$1" "$2" >> "$work/clients.txt"
}
record() { # test mode metric value (and the round, for the figures by round); no value: no line
  [ -n "$4" ] || return 0
  echo "$1 $2 $3 $4 ${r:-0}" >> "$results"
}
reset_logs() {
  : > "$work/audit.jsonl"
  : > "$work/nginx/access.log"
}

# run_client MODE CMD... : runs a client against MODE after its warm-up
# (warm_up), prints its output, a PROXY_CPU_TICKS line (the proxy's CPU
# meanwhile; 0 for direct) and an UPSTREAM_CPU_TICKS line (the upstream's),
# neither counting the warm-up.
run_client() {
  local mode=$1 t0 t1 u0 rc=0 ups
  shift
  reset_logs
  ups=$(proc_pids "$up_pid" | tr '\n' ' ')
  case $mode in
    transparent | base)
      local b=$bin warmed=$work/warmed-up
      [ "$mode" = base ] && b=$base_bin
      rm -f "$warmed"
      if [ -n "$profile_dir" ] && [ "$mode" = transparent ] && [ -n "${profile_name:-}" ]; then
        local kind suffix secs
        for kind in profile mutex ${BENCH_TRACE:+trace}; do
          secs=$((dur > 3 ? dur - 2 : 1))
          case $kind in
            profile) suffix=.pb.gz ;;
            mutex) suffix=.mutex.pb.gz ;;
            trace) suffix=.trace secs=$((secs < 2 ? secs : 2)) ;; # some 1 MB a second at c32
          esac
          ( # from a second after __inner's warm-up (2 minutes at most)
            for _ in $(seq 600); do [ -e "$warmed" ] && break; sleep 0.2; done
            sleep 1
            curl -s -o "$profile_dir/$profile_name$suffix" \
              "http://$pprof_addr/debug/pprof/$kind?seconds=$secs"
          ) &
        done
      fi
      BENCH_WARMED=$warmed BENCH_UP_PIDS=$ups SLUICE_PPROF=$pprof_addr \
        timeout $((dur + ${BENCH_WARMUP:-2} + 180)) "$b" run --config "$work/config.yaml" --policy "$work/policy.yaml" \
        -- "$self" __inner "$@" || rc=$?
      return $rc ;;
  esac
  warm_up "$@"
  # shellcheck disable=SC2086
  u0=$(ticks $ups)
  case $mode in
    direct) timeout $((dur + 60)) "$@" || rc=$?; echo "PROXY_CPU_TICKS 0" ;;
    nginx)
      local np; np=$(proc_pids "$ng_pid")
      # shellcheck disable=SC2086
      t0=$(ticks $np); timeout $((dur + 60)) "$@" || rc=$?
      # shellcheck disable=SC2086
      t1=$(ticks $np); echo "PROXY_CPU_TICKS $((t1 - t0))" ;;
    explicit)
      t0=$(ticks "$ex_pid"); timeout $((dur + 60)) "$@" || rc=$?
      t1=$(ticks "$ex_pid"); echo "PROXY_CPU_TICKS $((t1 - t0))" ;;
  esac
  # shellcheck disable=SC2086
  echo "UPSTREAM_CPU_TICKS $(($(ticks $ups) - u0))"
  return $rc
}
per_req_us() { # ticks requests: CPU µs per request
  awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t*1e6/hz/n}'
}

url_of() { # mode -> base URL of the upstream as that mode's client sees it
  case $1 in
    direct | transparent | base) echo "https://$up_ip:$up_port" ;;
    nginx) echo "https://127.0.0.1:$ng_port" ;;
  esac
}

# hello_start and hello_count: for newconn, the share of the client's TLS
# handshakes with the proxy that resumed a session (resumed_pct: TLS 1.3,
# a ServerHello with pre_shared_key; TLS 1.2, one that echoes the
# ClientHello's session ID) and that were TLS 1.3 (tls13_pct: a ServerHello
# with supported_versions), from a capture on lo of the packets that
# start with a TLS handshake record (wrk to nginx and to Sluice run on lo;
# the proxies' upstream connections on the veth are not counted). Needs
# dumpcap and tshark (Debian tshark); without them it is not measured.
hello_start() { # file
  hello_pid=
  command -v dumpcap >/dev/null && command -v tshark >/dev/null || return 0
  dumpcap -q -i lo -s 256 -f 'tcp[((tcp[12] & 0xf0) >> 2)] = 0x16' -w "$1" >/dev/null 2>&1 &
  hello_pid=$!
  pids+=("$hello_pid")
  for _ in $(seq 50); do [ -s "$1" ] && return 0; sleep 0.1; done
}
hello_count() { # file test mode
  [ -n "$hello_pid" ] || return 0
  sleep 0.2
  stop_pid "$hello_pid"
  tshark -r "$1" -Y 'tls.handshake.type == 1 || tls.handshake.type == 2' -T fields -E separator=';' \
    -e tcp.stream -e tls.handshake.type -e tls.handshake.session_id -e tls.handshake.extension.type 2>/dev/null |
    awk -F';' -v t="$2" -v m="$3" '
      function has(list, v) { return ("," list ",") ~ ("," v ",") }
      has($2, 1) { sid[$1] = $3; next }          # ClientHello: its session ID
      has($2, 2) {                               # ServerHello
        n++
        if (has($4, 43)) { v13++; if (has($4, 41)) res++ }  # TLS 1.3: PSK accepted
        else if ($3 != "" && $3 == sid[$1]) res++          # TLS 1.2: session ID echoed
      }
      END { if (n > 0) printf "%s %s resumed_pct %.1f\n%s %s tls13_pct %.1f\n", t, m, 100 * res / n, t, m, 100 * v13 / n }' >>"$results" ||
    echo "newconn $3: could not read the handshake capture" >&2
  rm -f "$1"
}

wrk_run() { # test mode conns [extra wrk args]
  local test=$1 mode=$2 c=$3 out
  shift 3
  profile_name=$test-c$c-r$r
  local hellos=
  if [ "$test" = newconn ] && [ "$mode" != direct ]; then
    hellos=$work/hello.pcapng
    hello_start "$hellos"
  fi
  out=$(run_client "$mode" wrk -t 2 -c "$c" -d "${dur}s" --timeout 10s --latency "$@" "$(url_of "$mode")/") || {
    echo "wrk $test $mode $c failed: $out" >&2
    [ -z "$hellos" ] || hello_count "$hellos" "$test/c$c" "$mode"
    return 0
  }
  [ -z "$hellos" ] || hello_count "$hellos" "$test/c$c" "$mode"
  wrk_record "$test/c$c" "$mode" "$out" up
  if [ "$test" = h1 ]; then log_record "$test/c$c" "$mode"; fi
}

# log_record NAME MODE: the mean size of the lines the proxy's log got
# during the measurement (log_bytes_per_line: Sluice's JSON audit log,
# nginx's access log; each has one line per request), what each proxy
# writes to disk per request. The warm-up's lines count too, and those
# nginx still holds in its buffer do not: the mean is the same.
log_record() {
  local f
  case $2 in
    nginx) f=$work/nginx/access.log ;;
    transparent | base) f=$work/audit.jsonl ;;
    *) return 0 ;;
  esac
  local lines bytes
  read -r lines bytes < <(wc -l -c <"$f")
  if [ "$lines" -gt 0 ]; then record "$1" "$2" log_bytes_per_line "$(((bytes + lines / 2) / lines))"; fi
}

# wrk_record NAME MODE OUTPUT [up]: records what wrk's output (run through
# run_client) says; up: the upstream's CPU per request too (not when
# other clients shared the upstream meanwhile).
wrk_record() {
  local name=$1 mode=$2 out=$3 rps req p50 p99 cpu
  keep_output "$name $mode round $r" "$out"
  rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
  req=$(awk '/requests in/{print $1}' <<<"$out")
  p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
  cpu=$(awk '/^PROXY_CPU_TICKS/{print $2}' <<<"$out")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "$name $mode: $(grep "Non-2xx\|Socket errors" <<<"$out")" >&2
  fi
  record "$name" "$mode" rps "$rps"
  record "$name" "$mode" p50_us "$p50"
  record "$name" "$mode" p99_us "$p99"
  if [ "${req:-0}" -gt 0 ]; then # direct has no proxy: its cell stays empty
    record "$name" "$mode" cpu_us_per_req "$([ "$mode" = direct ] || per_req_us "$cpu" "$req")"
    [ -z "${4:-}" ] || record "$name" "$mode" up_cpu_us_per_req "$(per_req_us "$(awk '/^UPSTREAM_CPU_TICKS/{print $2}' <<<"$out")" "$req")"
  fi
}

h2_run() { # mode
  local mode=$1 out
  profile_name=h2-r$r
  out=$(run_client "$mode" h2load -c 32 -m 10 -t 2 -D "$dur" "$(url_of "$mode")/") || {
    echo "h2load $mode failed: $out" >&2
    return 0
  }
  h2_record h2/c32m10 "$mode" "$out" up
}

# h2_record NAME MODE OUTPUT [up]: as wrk_record, for h2load's output.
h2_record() {
  local name=$1 mode=$2 out=$3 done cpu
  keep_output "$name $mode round $r" "$out"
  record "$name" "$mode" rps "$(awk '/^finished in/{print $4}' <<<"$out")"
  done=$(awk '/^requests:/{print $8}' <<<"$out")
  cpu=$(awk '/^PROXY_CPU_TICKS/{print $2}' <<<"$out")
  if [ "${done:-0}" -gt 0 ]; then
    record "$name" "$mode" cpu_us_per_req "$([ "$mode" = direct ] || per_req_us "$cpu" "$done")"
    [ -z "${4:-}" ] || record "$name" "$mode" up_cpu_us_per_req "$(per_req_us "$(awk '/^UPSTREAM_CPU_TICKS/{print $2}' <<<"$out")" "$done")"
  fi
}

# together_run h1 CONNS | together_run h2: nginx, Sluice transparent and
# (BENCH_BASE) base measured at the same time, each behind its own client
# (wrk -t 1 -c CONNS, or h2load -c 32 -m 10 -t 1), all sharing the CPUs
# and the upstream for the same seconds. A change in the machine's speed
# (other guests, frequency) then falls on all of them alike, where the
# modes measured one after the other each meet another moment of it: the
# ratios of CPU per request are the ones to read here. Each proxy gets
# what the scheduler gives its client and itself, so requests/s compares
# what the proxies do with a share of the machine, not what one does
# alone, and the upstream's CPU is not split between them.
together_run() {
  local kind=$1 c=${2:-32} m f ps=() ms=() profile_name= # no profile: the pprof listener is one
  for m in nginx $tmodes; do
    f=$work/together-$m.out
    if [ "$kind" = h1 ]; then
      run_client "$m" wrk -t 1 -c "$c" -d "${dur}s" --timeout 10s --latency "$(url_of "$m")/" >"$f" 2>&1 &
    else
      run_client "$m" h2load -c 32 -m 10 -t 1 -D "$dur" "$(url_of "$m")/" >"$f" 2>&1 &
    fi
    ps+=("$!")
    ms+=("$m")
  done
  local i
  for i in "${!ps[@]}"; do
    m=${ms[$i]}
    f=$work/together-$m.out
    if ! wait "${ps[$i]}"; then
      echo "together $kind $m failed: $(cat "$f")" >&2
      continue
    fi
    if [ "$kind" = h1 ]; then
      wrk_record "together-h1/c$c" "$m" "$(cat "$f")"
    else
      h2_record together-h2/c32m10 "$m" "$(cat "$f")"
    fi
  done
}

stream_run() { # mode
  profile_name=stream-r$r
  local mode=$1 out ca=() proxy=()
  case $mode in
    direct | nginx) ca=(--cacert "$work/ca.pem") ;;
    explicit) ca=(--cacert "$sluice_ca") proxy=(-x "http://127.0.0.1:$ex_port") ;;
  esac
  local u
  u=$(url_of "$mode")
  [ "$mode" = explicit ] && u="https://$up_ip:$up_port"
  out=$(run_client "$mode" curl -sS -o /dev/null --max-time $((dur + 55)) "${ca[@]}" "${proxy[@]}" \
    -w 'STREAM %{size_download} %{time_total}\n' "$u/bytes?n=$((stream_mb << 20))") || {
    echo "stream $mode failed: $out" >&2
    return 0
  }
  record "stream/${stream_mb}MB" "$mode" MB_per_s "$(awk '/^STREAM/{printf "%.0f", $2/1048576/$3}' <<<"$out")"
}

idle_run() { # mode [-h2]; nginx and explicit get a fresh process each time:
  # memory a long-lived one freed after earlier tests would hide the growth
  local mode=$1 h2=${2:-} out port=$((ng_port + 500)) p name=idle snap=()
  [ -n "$h2" ] && name=idle-h2
  if [ -n "$profile_dir" ]; then
    snap=(-snapshot "$profile_dir/$name-$mode-r$r")
    [ "$mode" != nginx ] && [ "$mode" != base ] && snap+=(-pprof "$idle_pprof_addr")
  fi
  case $mode in
    nginx)
      start_nginx "$port"; p=$started_pid; wait_port 127.0.0.1 "$port"
      out=$(timeout 180 "$work/benchpeers" idle -addr "127.0.0.1:$port" -sni api.bench.test -ca "$work/ca.pem" \
        -n "$idle_n" $h2 -pids "$(proc_pids "$p" | paste -sd,)" "${snap[@]}") || true
      stop_pid "$p" ;;
    explicit)
      start_explicit "$port" "${snap:+$idle_pprof_addr}"; p=$started_pid; wait_port 127.0.0.1 "$port"
      out=$(timeout 180 "$work/benchpeers" idle -addr "$up_ip:$up_port" -proxy "127.0.0.1:$port" -sni "$up_ip" \
        -ca "$sluice_ca" -n "$idle_n" $h2 -pids "$p" "${snap[@]}") || true
      stop_pid "$p" ;;
    transparent | base)
      local b=$bin
      [ "$mode" = base ] && b=$base_bin
      out=$(SLUICE_PPROF=${snap:+$idle_pprof_addr} timeout 240 "$b" run --config "$work/config.yaml" --policy "$work/policy.yaml" \
        -- "$work/benchpeers" idle -addr "$up_ip:$up_port" -sni "$up_ip" -ca "$sluice_ca" -n "$idle_n" $h2 -pids ppid "${snap[@]}") || true ;;
  esac
  grep -q '^idle ' <<<"$out" || { echo "$name $mode failed: $out" >&2; return 0; }
  record "$name/n$idle_n" "$mode" KiB_per_conn "$(awk '/^idle /{print $8}' <<<"$out")"
}

explicit_run() { # mode: h1 keep-alive at 32 connections with the Go client
  local mode=$1 out args
  case $mode in
    direct) args=(-url "https://$up_ip:$up_port/" -sni api.bench.test -ca "$work/ca.pem") ;;
    nginx) args=(-url "https://127.0.0.1:$ng_port/" -sni api.bench.test -ca "$work/ca.pem") ;;
    explicit) args=(-url "https://$up_ip:$up_port/" -sni "$up_ip" -ca "$sluice_ca" -proxy "127.0.0.1:$ex_port") ;;
  esac
  out=$(run_client "$mode" "$work/benchpeers" load -c 32 -d "${dur}s" "${args[@]}") || {
    echo "load $mode failed: $out" >&2
    return 0
  }
  local line cpu
  line=$(grep '^requests ' <<<"$out")
  cpu=$(awk '/^PROXY_CPU_TICKS/{print $2}' <<<"$out")
  record goclient-h1/c32 "$mode" rps "$(awk '{print $4}' <<<"$line")"
  record goclient-h1/c32 "$mode" p50_us "$(awk '{print $6}' <<<"$line")"
  record goclient-h1/c32 "$mode" p99_us "$(awk '{print $8}' <<<"$line")"
  if [ "$mode" != direct ]; then
    record goclient-h1/c32 "$mode" cpu_us_per_req "$(awk -v t="$cpu" -v l="$line" -v hz="$(getconf CLK_TCK)" 'BEGIN{split(l,f," "); printf "%.1f", t*1e6/hz/f[2]}')"
  fi
}

soak_run() {
  local secs=${BENCH_SOAK:-600} every=${BENCH_SOAK_EVERY:-30} mport=$((16000 + $$ % 1000)) out peak rate
  local args=(-url "https://$up_ip:$up_port/" -sni "$up_ip" -ca "$sluice_ca" -c 32)
  profile_name=
  out=$(run_client transparent "$work/benchpeers" load -d "${dur}s" "${args[@]}") || true
  peak=$(awk '/^requests /{print $4}' <<<"$out")
  [ -n "$peak" ] || { echo "soak: peak run failed: $out" >&2; return 0; }
  rate=$((${peak%.*} / 2))
  echo "soak: peak $peak req/s with the Go client at 32 connections; $secs s at $rate req/s" >&2
  reset_logs
  "$bin" run --metrics "127.0.0.1:$mport" --config "$work/config.yaml" --policy "$work/policy.yaml" \
    -- "$work/benchpeers" load -d "${secs}s" -rate "$rate" "${args[@]}" >"$work/soak.out" 2>&1 &
  local sp=$! t0 now
  pids+=("$sp")
  t0=$(date +%s)
  : >"$work/soak.tsv"
  sample() { # t rss_kib goroutines cpu_ticks requests
    local m
    m=$(curl -s --max-time 5 "http://127.0.0.1:$mport/metrics") || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "$(($(date +%s) - t0))" \
      "$(awk '/^VmRSS:/{print $2}' "/proc/$sp/status" 2>/dev/null)" \
      "$(awk '$1=="go_goroutines"{print $2}' <<<"$m")" "$(ticks "$sp")" \
      "$(awk '/^sluice_proxy_requests_total/{s+=$2} END{printf "%d", s}' <<<"$m")" | tee -a "$work/soak.tsv" >&2
  }
  echo "soak samples: t_s rss_kib goroutines cpu_ticks requests" >&2
  while kill -0 "$sp" 2>/dev/null; do
    now=$(($(date +%s) - t0))
    [ "$now" -ge "$secs" ] && break
    sleep "$every"
    kill -0 "$sp" 2>/dev/null && sample
  done
  wait "$sp" 2>/dev/null || true
  grep -q '^requests ' "$work/soak.out" || { echo "soak: client failed: $(cat "$work/soak.out")" >&2; return 0; }
  awk -v hz="$(getconf CLK_TCK)" -v name="soak/${secs}s" '
    { t[NR]=$1; rss[NR]=$2; g[NR]=$3; cpu[NR]=$4; req[NR]=$5 }
    END {
      if (NR < 3) exit
      b = 1; while (b < NR - 1 && t[b] < 60) b++
      printf "%s transparent rss_growth_pct %.1f\n", name, (rss[NR] - rss[b]) * 100 / rss[b]
      printf "%s transparent goroutine_growth %d\n", name, g[NR] - g[b]
      printf "%s transparent rps %.0f\n", name, (req[NR] - req[b]) / (t[NR] - t[b])
      if (req[b+1] > req[b]) printf "%s transparent cpu_us_first %.1f\n", name, (cpu[b+1]-cpu[b]) * 1e6 / hz / (req[b+1]-req[b])
      if (req[NR] > req[NR-1]) printf "%s transparent cpu_us_last %.1f\n", name, (cpu[NR]-cpu[NR-1]) * 1e6 / hz / (req[NR]-req[NR-1])
    }' "$work/soak.tsv" >>"$results"
  record "soak/${secs}s" transparent target_rps "$rate"
}

has() { [[ " $tests " == *" $1 "* ]]; }
start=$(date +%s)
for r in $(seq "$rounds"); do
  echo "round $r of $rounds ($(($(date +%s) - start)) s so far)" >&2
  if has h1; then
    for c in $conns; do for m in direct nginx $tmodes; do wrk_run h1 "$m" "$c"; done; done
  fi
  if has newconn; then
    for m in direct nginx $tmodes; do wrk_run newconn "$m" 32 -H "Connection: close"; done
  fi
  if has h2; then
    for m in direct nginx $tmodes; do h2_run "$m"; done
  fi
  if has together; then
    for c in $conns; do together_run h1 "$c"; done
    together_run h2
  fi
  if has stream; then
    for m in direct nginx $tmodes explicit; do stream_run "$m"; done
  fi
  if has explicit; then
    for m in direct nginx explicit; do explicit_run "$m"; done
  fi
  if has idle; then
    for m in nginx $tmodes explicit; do idle_run "$m"; done
  fi
  if has idle-h2; then
    for m in nginx $tmodes explicit; do idle_run "$m" -h2; done
  fi
done
if has soak; then soak_run; fi

echo
echo "Sluice vs nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(nproc) CPUs, $rounds interleaved rounds of ${dur}s, median per cell; ×nginx = the mode's figure / nginx's"
echo "(clients, proxies and the upstream share these CPUs; compare within one run)"
awk -v base="$base_bin" '
  { k=$1" "$3; v[k" "$2]=v[k" "$2]" "$4; keys[k]=1; if (!(k in order)) { order[k]=++n; list[n]=k } }
  function median(s,   a, m, i, j, t) {
    m = split(s, a, " "); if (m == 0) return "";
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((m + 1) / 2)]
  }
  function cell(x) { return x == "" ? "-" : x }
  function ratio(x, y) { return (x == "" || y == "" || y + 0 == 0) ? "-" : sprintf("%.2f", x / y) }
  END {
    printf "%-20s %-18s %10s %10s %12s %12s %10s %10s", "test", "metric", "direct", "nginx", "transparent", "explicit", "T×nginx", "E×nginx"
    if (base != "") printf " %10s %10s", "base", "T×base"
    printf "\n"
    for (i = 1; i <= n; i++) {
      k = list[i]; split(k, kk, " ")
      d = median(v[k" direct"]); g = median(v[k" nginx"]); t = median(v[k" transparent"]); e = median(v[k" explicit"])
      printf "%-20s %-18s %10s %10s %12s %12s %10s %10s", kk[1], kk[2], cell(d), cell(g), cell(t), cell(e), ratio(t, g), ratio(e, g)
      if (base != "") { b = median(v[k" base"]); printf " %10s %10s", cell(b), ratio(t, b) }
      printf "\n"
    }
  }' "$results"
# By round: how far apart the rounds of one run are, which a median hides
# (on this kind of machine a change of a few percent is inside it), and
# the median of the paired ratios: the table above divides medians taken
# over different rounds, this one ratios taken within a round.
if [ "$rounds" -gt 1 ]; then
  echo
  echo "By round: requests/s, p99 and CPU per request, transparent as a ratio to nginx (T×nginx) and to base (T×base) measured in the same round, and the median of those ratios"
  awk -v base="$base_bin" '
    NF >= 5 && $5 > 0 && ($3 == "cpu_us_per_req" || $3 == "rps" || $3 == "p99_us") {
      k = $1" "$3; v[k" "$2" "$5] = $4; if ($5 > R) R = $5
      if (!(k in seen)) { seen[k] = 1; list[++n] = k }
    }
    # row: the round ratios, then their median (the rounds paired: an
    # hour that slows every proxy of a round moves both sides of its ratio)
    function row(k, other,   i, j, m, s, t, o, a, x) {
      m = 0
      for (i = 1; i <= R; i++) {
        t = v[k" transparent "i]; o = v[k" "other" "i]
        if (t == "" || o == "" || o + 0 == 0) { s = s sprintf(" %5s", "-"); continue }
        a[++m] = t / o
        s = s sprintf(" %5.2f", t / o)
      }
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
      if (m == 0) return s "  (median -)"
      x = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
      return s sprintf("  (median %.2f)", x)
    }
    END {
      for (i = 1; i <= n; i++) {
        k = list[i]; split(k, kk, " ")
        if (v[k" transparent 1"] == "" && v[k" transparent "R] == "") continue
        printf "%-20s %-18s T×nginx%s", kk[1], kk[2], row(k, "nginx")
        if (base != "") printf "   T×base%s", row(k, "base")
        printf "\n"
      }
    }' "$results"
fi
echo "(took $(($(date +%s) - start)) s)" >&2
