package test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The attacker, under `sluice run` with a policy that denies denied.test
// by name, connects to denied.test's address without naming it: TLS with
// no SNI (curl to an IP), a Host header naming it, no Host at all. None of
// it reaches the host; a request that names an allowed host there (SNI
// api.test) does. Sluice resolves names through the system resolver, so
// the run gets a hosts file of its own in a private mount namespace.
func TestRunNoSNINoHostCannotDodgeHostDeny(t *testing.T) {
	RequireE2E(t)
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	var mu sync.Mutex
	hits := map[string]int{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		fmt.Fprintf(w, "reached %s\n", r.URL.Path)
	})
	up := StartUpstream(t, &api.NS, []netip.AddrPort{netip.AddrPortFrom(api.IP4, 443)}, mux, "api.test", "denied.test")
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	cfg := filepath.Join(dir, "config.yaml")
	pol := filepath.Join(dir, "policy.yaml")
	auditLog := filepath.Join(dir, "audit.jsonl")
	for name, body := range map[string]string{
		hosts: fmt.Sprintf("127.0.0.1 localhost\n%s denied.test api.test\n", api.IP4),
		cfg:   fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", filepath.Join(dir, "ca"), up.CAFile),
		pol: `version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15", "2001:2::/48"]
rules:
  - name: no-denied
    destinations: {hosts: [denied.test]}
    action: deny
`,
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	curl := mustLookPath(t, "curl")
	unshare := mustLookPath(t, "unshare")
	ip := api.IP4.String()
	run := func(args ...string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		script := `mount --bind "$0" /etc/hosts && exec "$@"`
		argv := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, hosts,
			sluiceBin, "run", "--config", cfg, "--policy", pol, "--audit-log", auditLog, "--no-summary", "--", curl, "-sS", "--max-time", "10"}, args...)
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, unshare, argv...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		} else if err != nil {
			t.Fatalf("run: %v\n%s", err, out.String())
		}
		return 0, out.String()
	}

	if code, out := run("https://api.test/named"); code != 0 {
		t.Fatalf("SNI api.test at the shared address: exit %d\n%s", code, out)
	}
	for _, attempt := range [][]string{
		{"-k", "https://" + ip + "/no-sni", "-H", "Host: denied.test"},
		{"-k", "--http1.0", "https://" + ip + "/no-sni-no-host", "-H", "Host:"},
		{"-k", "https://" + ip + "/no-sni-ip-host"},
	} {
		if code, out := run(attempt...); code == 0 {
			t.Errorf("curl %v: exit 0, want the connection refused\n%s", attempt, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if hits["/named"] != 1 || len(hits) != 1 {
		t.Errorf("the host received %v; want only /named", hits)
	}
	recs, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(recs, []byte(`"rule":"no-denied"`)); n < 3 {
		t.Errorf("%d records name the rule no-denied, want one per attempt:\n%s", n, recs)
	}
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed: %v", name, err)
	}
	return p
}
