package test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A client that does not trust Sluice's CA (curl told to trust only the
// API's own CA, as a pinned client would) fails through `sluice run`, and
// the audit log says client_untrusted with its process and host. With
// tls.onUntrustedClient: passthrough, its next connection to that host is
// passed through and succeeds end to end with the API's own certificate,
// and the record says passthrough and why. As the attacker: the
// pass-through holds for that program and host only, another program of
// the workload (a copy of curl) and another host are still intercepted.
func TestRunClientUntrustedPassthrough(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireE2E(t)
	py := RequireTool(t, "python3")
	tp := NewTopology(t, 2)
	api, res := tp.Hosts[0], tp.Hosts[1]
	// Pass-through trusts the SNI only where the name resolves to the
	// address: the workload resolves api.test through the run's DNS
	// server, which forwards to this test's resolver.
	startTestResolver(t, res, map[string]netip.Addr{"api.test": api.IP4})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s from %s\n", r.Method, r.URL.Path, r.Host)
	})
	up := StartUpstream(t, &api.NS, []netip.AddrPort{netip.AddrPortFrom(api.IP4, 443)}, mux, "api.test", "other.test")
	dir := t.TempDir()
	e := &runEnv{api: api, up: up, caDir: filepath.Join(dir, "ca"),
		config: filepath.Join(dir, "config.yaml"), policy: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl")}
	if err := os.WriteFile(e.config, []byte(fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\nagent:\n  dns:\n    upstreams: [%s]\n", e.caDir, up.CAFile, res.IP4)), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := e2ePolicy + "tls:\n  onUntrustedClient: passthrough\n"
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	// Another program of the same workload: a copy of curl (another exe).
	curl2 := filepath.Join(dir, "curl-other")
	if out, err := exec.Command("cp", curl, curl2).CombinedOutput(); err != nil {
		t.Fatalf("copy curl: %v %s", err, out)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ip := api.IP4.String()
	fetch := func(bin, host, path string) string {
		return fmt.Sprintf(`%s -sS --max-time 10 --cacert %s --resolve %s:443:%s https://%s%s; echo "[%s exit=$?]"; `, bin, up.CAFile, host, ip, host, path, path)
	}
	// The query goes to the test's resolver (the hooks steer it to the
	// run's DNS server, which forwards it there).
	query := filepath.Join(dir, "query.py")
	if err := os.WriteFile(query, []byte(dnsQueryPy), 0o644); err != nil {
		t.Fatal(err)
	}
	resolve := fmt.Sprintf("%s %s %s api.test; ", py, query, res.IP4)
	script := resolve + fetch(curl, "api.test", "/first") +
		fetch(curl2, "api.test", "/copy") +
		fetch(curl, "api.test", "/second") +
		fetch(curl, "other.test", "/third")
	code, out, errOut := e.run(t, "/bin/sh", "-c", script)
	t.Logf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	for _, want := range []string{
		"api.test " + ip + "\n",
		"[/first exit=60]",                  // curl: the peer certificate cannot be authenticated
		"[/copy exit=60]",                   // another program: still intercepted
		"hello GET /second from api.test\n", // passed through, end to end
		"[/second exit=0]",
		"[/third exit=60]", // another host: still intercepted
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	recs := e.records(t)
	var untrusted, passed []map[string]any
	for _, r := range recs {
		switch {
		case r["decision"] == "client_untrusted":
			untrusted = append(untrusted, r)
		case r["tls"] == "passthrough":
			passed = append(passed, r)
		}
	}
	hosts := map[string]int{}
	for _, r := range untrusted {
		hosts[fmt.Sprint(r["host"])]++
		if r["reason"] != "client rejected the Sluice certificate" || r["pid"] == nil || r["cgroup"] == nil {
			t.Errorf("client_untrusted record without reason or identity: %v", r)
		}
		if c := fmt.Sprint(r["comm"]); c != "curl" && c != "curl-other" {
			t.Errorf("client_untrusted record names comm %q: %v", c, r)
		}
	}
	if hosts["api.test"] != 2 || hosts["other.test"] != 1 || len(untrusted) != 3 {
		t.Errorf("client_untrusted records by host %v, want api.test twice (curl, its copy) and other.test once; all: %v", hosts, untrusted)
	}
	if len(passed) != 1 {
		t.Fatalf("%d passthrough records, want 1: %v", len(passed), passed)
	}
	p := passed[0]
	if p["host"] != "api.test" || p["decision"] != "allow" || p["reason"] != "client rejected the Sluice certificate before; passed through" ||
		p["rule"] != "on-untrusted-client" || p["comm"] != "curl" {
		t.Errorf("passthrough record %v", p)
	}
	for _, r := range recs {
		if r["kind"] == "http" {
			t.Errorf("a request was decrypted: %v", r)
		}
	}
}

// dnsQueryPy asks the resolver at argv[1] for the A record of argv[2]
// over UDP and prints the name and the address answered.
const dnsQueryPy = `
import socket, struct, sys
name = sys.argv[2]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (sys.argv[1], 53))
data, _ = s.recvfrom(4096)
i = 12
while data[i]:
    i += data[i] + 1
i += 5  # the question's end, type and class
for _ in range(struct.unpack(">H", data[6:8])[0]):
    i += 2 if data[i] >= 0xc0 else len(name) + 2
    typ, _, _, n = struct.unpack(">HHIH", data[i:i+10])
    i += 10
    if typ == 1:
        print(name, socket.inet_ntoa(data[i:i+4]))
    i += n
`
