package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runEnv is one `sluice run` setup: an HTTPS API in its own namespace,
// a config that trusts the API's CA upstream, and a policy.
type runEnv struct {
	api    *Host
	up     *Upstream
	config string
	policy string
	audit  string
	caDir  string
}

const e2ePolicy = `version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15", "2001:2::/48"]
defaults:
  action: allow
rules:
  - name: no-admin
    destinations: {paths: ["/admin/**"]}
    action: deny
`

func newRunEnv(t testing.TB) *runEnv {
	t.Helper()
	RequireE2E(t)
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s from the API\n", r.Method, r.URL.Path)
	})
	up := StartUpstream(t, &api.NS, []netip.AddrPort{netip.AddrPortFrom(api.IP4, 443)}, mux, "api.test")
	dir := t.TempDir()
	e := &runEnv{api: api, up: up, caDir: filepath.Join(dir, "ca"),
		config: filepath.Join(dir, "config.yaml"), policy: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl")}
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", e.caDir, up.CAFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.policy, []byte(e2ePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs `sluice run … -- argv` in the root namespace and returns the
// command's exit code, its stdout and sluice's stderr.
func (e *runEnv) run(t *testing.T, argv ...string) (int, string, string) {
	t.Helper()
	return e.runFlags(t, nil, argv...)
}

// runFlags is run with extra flags for `sluice run`.
func (e *runEnv) runFlags(t *testing.T, flags []string, argv ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"run", "--config", e.config, "--policy", e.policy, "--audit-log", e.audit}, flags...)
	args = append(args, "--")
	args = append(args, argv...)
	cmd := exec.CommandContext(ctx, sluiceBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sluice run: %v\nstderr:\n%s", err, stderr.String())
	}
	return code, stdout.String(), stderr.String()
}

// records reads the JSON audit log.
func (e *runEnv) records(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(e.audit)
	if err != nil {
		t.Fatalf("open audit log: %v", err)
	}
	defer f.Close()
	var out []map[string]any
	s := bufio.NewScanner(f)
	for s.Scan() {
		var m map[string]any
		if err := json.Unmarshal(s.Bytes(), &m); err != nil {
			t.Fatalf("audit line is not JSON: %q: %v", s.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func httpRecord(recs []map[string]any, path string) map[string]any {
	for _, r := range recs {
		if r["kind"] == "http" && r["path"] == path {
			return r
		}
	}
	return nil
}

// `sluice run -- curl …`: curl trusts Sluice's CA only through the
// variables sluice run sets, uses no proxy variable, gets the API's body
// over HTTP/2, and the audit record and the summary name curl and its pid.
func TestRunCurl(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	resolve := "api.test:443:" + e.api.IP4.String()

	code, out, errOut := e.run(t, curl, "-sS", "--http2", "-w", "\nproto=%{http_version} pid-check\n", "--resolve", resolve, "https://api.test/v1/tools")
	if code != 0 {
		t.Fatalf("curl exit %d, want 0\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.HasPrefix(out, "hello GET /v1/tools from the API\n") {
		t.Fatalf("body = %q", out)
	}
	if !strings.Contains(out, "proto=2") {
		t.Errorf("curl did not negotiate HTTP/2 through Sluice: %q", out)
	}
	if !strings.Contains(errOut, "egress summary") || !strings.Contains(errOut, "curl") || !strings.Contains(errOut, "api.test") {
		t.Errorf("summary does not name curl and api.test:\n%s", errOut)
	}
	rec := httpRecord(e.records(t), "/v1/tools")
	if rec == nil {
		t.Fatalf("no audit record for /v1/tools in %v", e.records(t))
	}
	if rec["comm"] != "curl" || rec["pid"] == nil || rec["pid"].(float64) <= 0 {
		t.Errorf("record does not name curl's process: comm=%v pid=%v", rec["comm"], rec["pid"])
	}
	if rec["host"] != "api.test" || rec["status"] != float64(200) || rec["decision"] != "allow" || rec["tls"] != "decrypted" {
		t.Errorf("record = %v", rec)
	}
	if cg, _ := rec["cgroup"].(string); !strings.Contains(cg, "sluice-run-") {
		t.Errorf("record cgroup %q is not the run's transient cgroup", cg)
	}
}

// The command's exit code passes through, and a deny reaches the client
// as a 403 with the rule in a JSON body.
func TestRunDenyAndExitCode(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	resolve := "api.test:443:" + e.api.IP4.String()
	code, out, errOut := e.run(t, curl, "-sS", "-f", "--resolve", resolve, "https://api.test/admin/users")
	if code != 22 {
		t.Fatalf("curl -f on a deny: exit %d, want 22 (HTTP error passed through)\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, out, _ = e.run(t, curl, "-sS", "--resolve", resolve, "https://api.test/admin/users")
	if code != 0 {
		t.Fatalf("curl exit %d", code)
	}
	var body struct{ Error, Rule, Reason string }
	if err := json.Unmarshal([]byte(out), &body); err != nil || body.Rule != "no-admin" {
		t.Fatalf("deny body = %q (%v), want JSON naming rule no-admin", out, err)
	}
	rec := httpRecord(e.records(t), "/admin/users")
	if rec == nil || rec["decision"] != "deny" || rec["rule"] != "no-admin" || rec["status"] != float64(403) {
		t.Fatalf("deny record = %v", rec)
	}
	code, _, _ = e.run(t, "sh", "-c", "exit 7")
	if code != 7 {
		t.Fatalf("exit code %d, want 7", code)
	}
}

// A rule with capture: true writes the decrypted exchange to the pcapng
// file of audit.capture, which the real tshark dissects as plain HTTP;
// a connection no capture rule names is not written.
func TestRunCapturesDecryptedTraffic(t *testing.T) {
	curl := RequireTool(t, "curl")
	tshark := RequireTool(t, "tshark")
	e := newRunEnv(t)
	pcapFile := filepath.Join(t.TempDir(), "decrypted.pcapng")
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\naudit:\n  capture:\n    file: %s\n", e.caDir, e.up.CAFile, pcapFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := e2ePolicy + `  - name: watch-api
    destinations: {hosts: [api.test]}
    action: allow
    capture: true
`
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	resolve := []string{"--resolve", "api.test:443:" + e.api.IP4.String(), "--resolve", "other.test:443:" + e.api.IP4.String()}
	argv := append([]string{curl, "-sS", "--http1.1", "-k"}, resolve...)
	argv = append(argv, "https://api.test/captured/secret-tool", "https://other.test/not-captured")
	code, out, errOut := e.run(t, argv...)
	if code != 0 || !strings.Contains(out, "hello GET /captured/secret-tool") {
		t.Fatalf("curl exit %d: %s\n%s", code, out, errOut)
	}
	got, err := exec.Command(tshark, "-r", pcapFile, "-Y", "http.request", "-T", "fields", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, got)
	}
	if !strings.Contains(string(got), "GET\tapi.test\t/captured/secret-tool") {
		t.Errorf("tshark does not show the captured request:\n%s", got)
	}
	if strings.Contains(string(got), "not-captured") {
		t.Errorf("a connection no capture rule names was captured:\n%s", got)
	}
	resp, err := exec.Command(tshark, "-r", pcapFile, "-Y", "http.response", "-T", "fields", "-e", "http.response.code").CombinedOutput()
	if err != nil || !strings.Contains(string(resp), "200") {
		t.Errorf("tshark does not show the 200 response: %v\n%s", err, resp)
	}
}

// Rate limiting through the transparent path: the third request in a
// minute gets 429 with Retry-After and the IETF RateLimit headers, and
// the audit record names the rule.
func TestRunRateLimit(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	pol := strings.Replace(e2ePolicy, "defaults:\n  action: allow\n", "defaults:\n  action: allow\n  rateLimit: {minute: 2, by: workload}\n", 1)
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "https://api.test/limited"
	code, out, errOut := e.run(t, curl, "-sS", "--resolve", "api.test:443:"+e.api.IP4.String(),
		"-o", "/dev/null", "-w", "%{http_code}\n", url, "-o", "/dev/null", "-w", "%{http_code}\n", url,
		"-D", "-", "-o", "/dev/null", "-w", "%{http_code}\n", url)
	if code != 0 {
		t.Fatalf("curl exit %d\n%s\n%s", code, out, errOut)
	}
	// curl's -D applies to every URL: keep the -w lines, the bare codes.
	var codes []string
	for _, l := range strings.Split(out, "\n") {
		if len(l) == 3 && l[0] >= '1' && l[0] <= '5' {
			codes = append(codes, l)
		}
	}
	if strings.Join(codes, " ") != "200 200 429" {
		t.Fatalf("status codes %q, want 200 200 429\n%s", codes, out)
	}
	headers := strings.ToLower(out)
	for _, want := range []string{"retry-after: ", `ratelimit-policy: "default-minute";q=2;w=60`, `ratelimit: "default-minute";r=0;t=`} {
		if !strings.Contains(headers, want) {
			t.Errorf("429 lacks %q:\n%s", want, out)
		}
	}
	var limited int
	for _, r := range e.records(t) {
		if r["path"] == "/limited" && r["status"] == float64(429) && r["rule"] == "default" && r["source"] == "sluice" {
			limited++
		}
	}
	if limited != 1 {
		t.Errorf("want one 429 record for rule default, got %d", limited)
	}
}

// `sluice run --config` applies the audit section: audit.file receives
// the JSON records and audit.accessLog the combined-format lines, with no
// --audit-log flag.
func TestRunConfigAuditFiles(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	dir := t.TempDir()
	auditFile, accessLog := filepath.Join(dir, "from-config.jsonl"), filepath.Join(dir, "access.log")
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\naudit:\n  file: %s\n  accessLog: %s\n", e.caDir, e.up.CAFile, auditFile, accessLog)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sluiceBin, "run", "--config", e.config, "--policy", e.policy, "--no-summary", "--",
		curl, "-sS", "--resolve", "api.test:443:"+e.api.IP4.String(), "https://api.test/v1/from-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello GET /v1/from-config") {
		t.Fatalf("sluice run: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(auditFile); !strings.Contains(string(b), `"path":"/v1/from-config"`) {
		t.Errorf("audit.file lacks the request: %q", b)
	}
	if b, _ := os.ReadFile(accessLog); !strings.Contains(string(b), "GET /v1/from-config") {
		t.Errorf("audit.accessLog lacks the request: %q", b)
	}
}

// Under the default policy (audit), a request to loopback is let through
// as would_deny by the SSRF guard; `sluice run` writes no line about it to
// the command's stderr (only -v shows every decision). A deny does show.
//
// Needs mitm to log would_deny decision lines at Info (deny stays Warn).
func TestRunStderrOnlyDenials(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "loopback ok") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	// The default policy (no --policy), and the loopback port intercepted.
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("ca:\n  dir: %s\nagent:\n  ports: [\"%d\"]\n", e.caDir, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	loop := func(flags ...string) (string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append([]string{"run", "--config", cfg, "--audit-log", audit, "--no-summary"}, flags...)
		args = append(args, "--", curl, "-sS", fmt.Sprintf("http://127.0.0.1:%d/loop", port))
		cmd := exec.CommandContext(ctx, sluiceBin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("sluice run %v: %v\n%s", flags, err, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	out, errOut := loop()
	if out != "loopback ok\n" {
		t.Fatalf("curl to loopback: %q\n%s", out, errOut)
	}
	if rec := httpRecord(readRecords(t, audit), "/loop"); rec == nil || rec["decision"] != "would_deny" || rec["rule"] != "ssrf" {
		t.Fatalf("loopback record = %v, want would_deny by ssrf (audit mode)", rec)
	}
	if errOut != "" {
		t.Errorf("a would_deny wrote to the command's stderr:\n%s", errOut)
	}
	if _, errOut = loop("-v"); !strings.Contains(errOut, "decision=would_deny") {
		t.Errorf("-v does not show the would_deny decision:\n%s", errOut)
	}

	// A deny does reach stderr, without -v.
	code, _, errOut := e.run(t, curl, "-sS", "--resolve", "api.test:443:"+e.api.IP4.String(), "https://api.test/admin/users")
	if code != 0 || !strings.Contains(errOut, "decision=deny") || !strings.Contains(errOut, "level=WARN") {
		t.Errorf("exit %d; a deny is not on stderr as a warning:\n%s", code, errOut)
	}
}

// readRecords reads a JSON audit log.
func readRecords(t *testing.T, path string) []map[string]any {
	t.Helper()
	return (&runEnv{audit: path}).records(t)
}
