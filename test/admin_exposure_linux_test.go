package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The admin API as the attacker sees it, with the listener on a node
// address (as the DaemonSet's --admin-host puts it, for Prometheus):
//   - a selected workload (under `sluice run --metrics`) can connect
//     neither to that address and port nor to the loopback listener the
//     node adds beside it: the hooks refuse both (EPERM);
//   - a peer that is not selected (here the test itself, reaching the
//     node address from that address, as a pod or another node would)
//     gets /metrics and the probes, and 403 from the flows API;
//   - a loopback peer on the node (`sluice flows` run there) reads it.
func TestRunAdminExposure(t *testing.T) {
	py := RequireTool(t, "python3")
	e := newRunEnv(t)
	node := e.api.GW4 // an address of the node (the root-namespace end)
	port := freeAdminPort(t)
	addr := fmt.Sprintf("%s:%d", node, port)
	attack := fmt.Sprintf(`
import socket, errno, time
for host in (%q, "127.0.0.1"):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, %d))
        s.sendall(b"GET /api/flows HTTP/1.0\r\n\r\n")
        print(host, "connected", s.recv(100))
    except OSError as e:
        print(host, errno.errorcode.get(e.errno, e.errno))
    s.close()
print("attack done", flush=True)
time.sleep(6)
`, node.String(), port)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, "run", "--config", e.config, "--policy", e.policy, "--audit-log", e.audit,
		"--metrics", addr, "--", py, "-c", attack)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	get := func(url string) (int, string) {
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(stdout.String(), "attack done") {
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := get("http://" + addr + "/metrics"); code != 200 || !strings.Contains(body, "sluice_") {
		t.Errorf("/metrics on the node address: %d %.200s", code, body)
	}
	if code, _ := get("http://" + addr + "/readyz"); code != 200 {
		t.Errorf("/readyz on the node address: %d", code)
	}
	if code, body := get("http://" + addr + "/api/flows"); code != http.StatusForbidden || strings.Contains(body, "rows") {
		t.Errorf("/api/flows from a non-loopback peer: %d %.200s, want 403", code, body)
	}
	if code, body := get(fmt.Sprintf("http://127.0.0.1:%d/api/flows", port)); code != 200 || !strings.Contains(body, `"rows"`) {
		t.Errorf("/api/flows from loopback: %d %.200s, want the table", code, body)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sluice run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{node.String() + " EPERM", "127.0.0.1 EPERM"} {
		if !strings.Contains(out, want) {
			t.Errorf("the workload's connect: want %q in\n%s\nstderr:\n%s", want, out, stderr.String())
		}
	}
}
