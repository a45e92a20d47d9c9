package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An attacker's process connects as one binary, waits until the agent has
// seen it (its exe is remembered), then execs another binary and connects
// again under the same pid. Each connect, the one the kernel decides (UDP,
// recorded by the agent's event reader) and the redirected one (HTTPS,
// recorded by the proxy from the accept path), must name the binary that
// made it: the agent's exe cache (agent/exes.go) is keyed by the process
// image the hook saw, never by the pid alone, so a policy selecting by exe
// sees the new binary.
func TestExecAttributesNewExe(t *testing.T) {
	e := newRunEnv(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "second-binary")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(second, b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLUICE_E2E_EXEC_CONNECT", e.api.IP4.String()+" first "+second)
	code, out, errOut := e.run(t, self)
	if code != 0 {
		t.Fatalf("workload exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "GET /exec-first") || !strings.Contains(out, "GET /exec-second") {
		t.Fatalf("workload did not reach the API as both binaries: %q", out)
	}
	recs := e.records(t)
	first, again := httpRecord(recs, "/exec-first"), httpRecord(recs, "/exec-second")
	if first == nil || again == nil {
		t.Fatalf("no audit records for /exec-first and /exec-second in %v", recs)
	}
	if first["pid"] != again["pid"] {
		t.Fatalf("the exec changed the pid (%v, %v): the test proves nothing", first["pid"], again["pid"])
	}
	if first["exe"] != self || again["exe"] != second {
		t.Errorf("redirected connects name exe %v then %v, want %s then %s", first["exe"], again["exe"], self, second)
	}
	var exes []any
	for _, r := range recs {
		if r["kind"] == "connect" && r["port"] == float64(9) && r["pid"] == first["pid"] {
			exes = append(exes, r["exe"])
		}
	}
	if len(exes) != 2 || exes[0] != self || exes[1] != second {
		t.Errorf("kernel-decided connects name exes %v, want [%s %s]", exes, self, second)
	}
}

// execConnect is the workload of TestExecAttributesNewExe; spec is "IP
// STEP [NEXT]". It connects a UDP socket to IP:9 (sent direct, an agent
// event), fetches https://api.test/exec-STEP from IP:443 (redirected to
// the proxy) and prints the body; with NEXT it waits for the agent to
// have read its event, then execs NEXT as step "second".
func execConnect(spec string) int {
	f := strings.Fields(spec)
	if len(f) < 2 {
		fmt.Fprintln(os.Stderr, "exec connect: want IP STEP [NEXT]:", spec)
		return 2
	}
	ip, step := f[0], f[1]
	c, err := net.Dial("udp", net.JoinHostPort(ip, "9"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "exec connect:", err)
		return 1
	}
	c.Close()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(ip, "443"))
	}}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get("https://api.test/exec-" + step)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exec connect:", err)
		return 1
	}
	_, _ = io.Copy(os.Stdout, resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	if len(f) < 3 {
		return 0
	}
	time.Sleep(300 * time.Millisecond) // the agent reads events at least every 20ms
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SLUICE_E2E_EXEC_CONNECT=") {
			env = append(env, kv)
		}
	}
	env = append(env, "SLUICE_E2E_EXEC_CONNECT="+ip+" second")
	err = syscall.Exec(f[2], []string{f[2]}, env)
	fmt.Fprintln(os.Stderr, "exec connect: exec:", err)
	return 1
}
