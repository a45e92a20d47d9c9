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
	"time"
)

// Through `sluice proxy` with proxy.clients: a request without
// credentials or with a wrong password gets 407, one with curl's
// --proxy-user is served as the workload sluice-proxy/USER (whom a rule
// selects by label; the other user's tunnel is denied by default) and the
// upstream never sees Proxy-Authorization; a
// client outside allowCIDRs (127.0.0.2) gets 403. Every refusal is
// recorded with its reason, and no record holds the password.
func TestProxyClientsAuth(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireE2E(t)
	tp := NewTopology(t, 1)
	host := tp.Hosts[0]
	leaked := make(chan string, 16)
	up := StartUpstream(t, &host.NS, []netip.AddrPort{netip.AddrPortFrom(host.IP4, 443)}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("Proxy-Authorization"); v != "" {
			leaked <- v
		}
		fmt.Fprintln(w, "hello from api")
	}), "api.test")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	cfg, pol, users, auditLog := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "policy.yaml"),
		filepath.Join(dir, "users"), filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(users, []byte("# name:password\nalice:open-sesame\nbob:sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n  clients:\n    allowCIDRs: [127.0.0.1/32]\n    usersFile: %s\n", caDir, up.CAFile, users)), 0o600); err != nil {
		t.Fatal(err)
	}
	ip := host.IP4.String()
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
defaults:
  action: deny
ssrf:
  allowCIDRs: ["198.18.0.0/15"]
rules:
  - name: alice-api
    workloads: {namespaces: [sluice-proxy], labels: {sluice.dev/proxy-user: alice}}
    destinations: {hosts: [%q]}
    action: allow
`, ip)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, logs := startProxy(t, "-v", "--config", cfg, "--policy", pol, "--audit-log", auditLog)

	get := func(src, url string, extra ...string) string {
		t.Helper()
		args := append([]string{"-sS", "--interface", src, "--proxy", "http://" + addr, "--cacert", filepath.Join(caDir, "ca.crt"),
			"-w", "status=%{http_code} connect=%{http_connect}", "-o", "/dev/null"}, extra...)
		out, _ := exec.Command(curl, append(args, url)...).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	https := "https://" + ip + "/"
	steps := []struct {
		name, src, url string
		extra          []string
		want           string
	}{
		{"CONNECT without credentials", "127.0.0.1", https, nil, "connect=407"},
		{"CONNECT with a wrong password", "127.0.0.1", https, []string{"--proxy-user", "alice:wrong"}, "connect=407"},
		{"CONNECT as alice", "127.0.0.1", https, []string{"-U", "alice:open-sesame"}, "status=200 connect=200"},
		{"CONNECT as bob: no rule selects him", "127.0.0.1", https, []string{"-U", "bob:password"}, "connect=200"},
		{"outside allowCIDRs, even with credentials", "127.0.0.2", https, []string{"-U", "alice:open-sesame"}, "connect=403"},
	}
	for _, s := range steps {
		if got := get(s.src, s.url, s.extra...); !strings.Contains(got, s.want) {
			t.Errorf("%s: curl says %q, want %q\nproxy: %s", s.name, got, s.want, logs.String())
		}
	}
	// Absolute-form plain HTTP goes through the same gate.
	if got := get("127.0.0.1", "http://"+ip+":80/"); !strings.Contains(got, "status=407") {
		t.Errorf("absolute-form without credentials: %q, want 407", got)
	}
	select {
	case v := <-leaked:
		t.Errorf("the upstream saw Proxy-Authorization %q", v)
	default:
	}

	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = got[:0]
		for _, r := range readRecords(t, auditLog) {
			if r["kind"] == "http" || r["kind"] == "l4" && r["reason"] == "denied by default" {
				got = append(got, fmt.Sprintf("%v %v %v %v %v", r["kind"], r["status"], r["workload"], r["decision"], r["reason"]))
			}
		}
		if len(got) >= 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	want := []string{
		"http 407 unknown deny proxy authentication required",
		"http 407 unknown deny proxy credentials invalid",
		"http 200 sluice-proxy/alice allow allowed by rule",
		"l4 <nil> sluice-proxy/bob deny denied by default",
		"http 403 unknown deny client address not in proxy.clients.allowCIDRs",
		"http 407 unknown deny proxy authentication required",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	b, _ := os.ReadFile(auditLog)
	if strings.Contains(string(b), "open-sesame") || strings.Contains(string(b), "YWxpY2U6") || strings.Contains(logs.String(), "open-sesame") {
		t.Errorf("a password reached the logs:\n%s\n%s", b, logs.String())
	}
}
