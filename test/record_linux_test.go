package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// A connect refused in the kernel never reaches the proxy, and still
// leaves an audit record naming the process and why.
func TestRunKernelDeniedConnectIsRecorded(t *testing.T) {
	e := newRunEnv(t)
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, fmt.Sprintf("agent:\n  denyCIDRs: [%s/32]\n", e.api.IP4)...)
	if err := os.WriteFile(e.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	curl := mustLookPath(t, "curl")
	code, _, errOut := e.run(t, curl, "-sS", "--resolve", "api.test:443:"+e.api.IP4.String(), "https://api.test/denied-in-kernel")
	if code != 7 { // curl: failed to connect
		t.Fatalf("curl exit %d; want 7, the connect refused in the kernel\n%s", code, errOut)
	}
	var rec map[string]any
	for _, r := range e.records(t) {
		if r["kind"] == "connect" {
			rec = r
		}
	}
	if rec == nil {
		t.Fatalf("no connect record in the audit log; stderr:\n%s", errOut)
	}
	if rec["decision"] != "deny" || rec["reason"] != "destination in agent.denyCIDRs" || rec["comm"] != "curl" ||
		rec["ip"] != e.api.IP4.String() || rec["port"] != float64(443) || !strings.HasPrefix(fmt.Sprint(rec["cgroup"]), "/") {
		t.Errorf("record %v", rec)
	}
}

// Connections that end before any HTTP leave L4 records with the
// workload's identity: a client that connects and closes without a byte,
// one whose TLS handshake fails, and one that starts a request head and
// never finishes it (slowloris).
func TestRunConnectionsWithoutRequestAreRecorded(t *testing.T) {
	e := newRunEnv(t)
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy gives up on a request head after handshakeTimeout.
	cfg = []byte(strings.Replace(string(cfg), "proxy:\n", "proxy:\n  handshakeTimeout: 500ms\n", 1))
	if err := os.WriteFile(e.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	python := mustLookPath(t, "python3")
	script := fmt.Sprintf(`import socket, ssl, os, time
ip = %q
s = socket.create_connection((ip, 443)); s.close(); time.sleep(0.3)    # silent
s = socket.create_connection((ip, 443)); s.sendall(b"\x16\x03\x01\x00\x05hello"); time.sleep(0.2); s.close()  # bad hello
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(socket.create_connection((ip, 443)), server_hostname="api.test")
t.sendall(b"GET /slow HTTP/1.1\r\nHost: api.test\r\nX-Slow: 1")  # never finished
try:
    t.recv(1)
except Exception:
    pass
print("done")`, e.api.IP4.String())
	code, out, errOut := e.run(t, python, "-c", script)
	if code != 0 || strings.TrimSpace(out) != "done" {
		t.Fatalf("exit %d %q\n%s", code, out, errOut)
	}
	// The decision of the silent client is "closed" (or "error" when the
	// close reached the proxy as a reset): either way it is recorded.
	want := map[string]string{
		"client sent nothing":     "closed|error",
		"malformed client hello":  "error",
		"request head incomplete": "error",
	}
	for _, r := range e.records(t) {
		reason, _ := r["reason"].(string)
		d, _ := r["decision"].(string)
		if ds, ok := want[reason]; ok && r["kind"] == "l4" && strings.Contains("|"+ds+"|", "|"+d+"|") && r["comm"] == "python3" && r["pid"] != nil {
			delete(want, reason)
		}
	}
	if len(want) > 0 {
		t.Errorf("no L4 record naming python3 for %v; records:\n%v", want, e.records(t))
	}
}

// A client that connects and closes while the proxy is not accepting yet
// (busy, or descheduled) is still recorded with its identity. Its close
// ends its socket before the proxy accepts the connection (FIN_WAIT2
// turns into TIME_WAIT, which the kernel reports as TCP_CLOSE), and that
// close must not take the connection's origin with it. The test holds
// the proxy still with SIGSTOP while the client comes and goes.
func TestRunClientGoneBeforeAcceptIsRecorded(t *testing.T) {
	e := newRunEnv(t)
	python := mustLookPath(t, "python3")
	// sluice run starts the command as its child.
	script := fmt.Sprintf(`import os, signal, socket, sys, time
proxy = os.getppid()
if open("/proc/%%d/comm" %% proxy).read().strip() != "sluice":
    sys.exit("the parent is not sluice")
os.kill(proxy, signal.SIGSTOP)
try:
    for i in range(3):
        s = socket.create_connection((%q, 443), timeout=5)
        s.close()
    time.sleep(0.3)
finally:
    os.kill(proxy, signal.SIGCONT)
time.sleep(0.5)
print("done")`, e.api.IP4.String())
	code, out, errOut := e.run(t, python, "-c", script)
	if code != 0 || strings.TrimSpace(out) != "done" {
		t.Fatalf("exit %d %q\n%s", code, out, errOut)
	}
	n := 0
	for _, r := range e.records(t) {
		if r["kind"] == "l4" && r["reason"] == "client sent nothing" && r["comm"] == "python3" && r["pid"] != nil {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d L4 records naming python3 for the 3 clients gone before accept; records:\n%v\nstderr:\n%s", n, e.records(t), errOut)
	}
}
