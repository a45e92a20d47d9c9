package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// nodeEnv is the whole node path: the real `sluice agent` binary
// selecting a test cgroup, a workload namespace whose processes run in
// that cgroup, and an HTTPS API in another namespace. Clients trust the
// Sluice CA through their usual environment variables and have no proxy
// variable.
type nodeEnv struct {
	t      *testing.T
	wl     *Host
	api    *Host
	cg     *Cgroup
	cfg    config.Config
	dir    string
	bundle string
	audit  string
	agent  *exec.Cmd
	logs   *bytes.Buffer
}

func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	RequireE2E(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	tp := NewTopology(t, 2)
	e := &nodeEnv{t: t, wl: tp.Hosts[0], api: tp.Hosts[1], cg: NewCgroup(t, mount), dir: t.TempDir()}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s over %s\n", r.Method, r.URL.Path, r.Proto)
	})
	up := StartUpstream(t, &e.api.NS, []netip.AddrPort{netip.AddrPortFrom(e.api.IP4, 443), netip.AddrPortFrom(e.api.IP6, 443)}, mux, "api.test", "api6.test")

	// Names resolve inside the workload namespace through the hosts file
	// that `ip netns exec` bind-mounts over /etc/hosts.
	etc := filepath.Join("/etc/netns", e.wl.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	hosts := fmt.Sprintf("127.0.0.1 localhost\n%s api.test\n%s api6.test\n", e.api.IP4, e.api.IP6)
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}

	e.audit = filepath.Join(e.dir, "audit.jsonl")
	e.cfg = config.Default()
	e.cfg.CA.Dir = filepath.Join(e.dir, "ca")
	e.cfg.Audit.File = e.audit
	e.cfg.Proxy.UpstreamCA = up.CAFile
	e.cfg.PolicyFile = filepath.Join(e.dir, "policy.yaml")
	e.cfg.Agent = testAgentConfig()
	e.cfg.Agent.Cgroups = []string{e.cg.Path}
	e.cfg.Admin.Listen = "127.0.0.1:0"
	if err := os.WriteFile(e.cfg.PolicyFile, []byte(e2ePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stopAgent()
		if err := agent.Cleanup(e.cfg.Agent, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return e
}

// startAgent runs `sluice agent` and waits (bounded) until its proxy
// listener accepts.
func (e *nodeEnv) startAgent() {
	t := e.t
	t.Helper()
	b, err := yaml.Marshal(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.dir, "config.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.logs = &bytes.Buffer{}
	e.agent = exec.Command(sluiceBin, "agent", "--config", path)
	e.agent.Stdout, e.agent.Stderr = e.logs, e.logs
	if err := e.agent.Start(); err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(e.cfg.Agent.InterceptIPv4, e.cfg.Agent.ProxyPort).String()
	for i := 0; i < 100; i++ {
		// Never dial the intercept address before the kernel routes it as
		// local: elsewhere it would leave the machine.
		if !routedLocal(e.cfg.Agent.InterceptIPv4) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			e.bundle = filepath.Join(e.dir, "sluice-ca.pem")
			out, err := exec.Command(sluiceBin, "ca", "export", "--dir", e.cfg.CA.Dir).Output()
			if err != nil {
				t.Fatalf("sluice ca export: %v: %s\nagent log:\n%s", err, err.(*exec.ExitError).Stderr, e.logs)
			}
			if err := os.WriteFile(e.bundle, out, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		if e.agent.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("sluice agent did not start listening on %s:\n%s", addr, e.logs)
}

func (e *nodeEnv) stopAgent() {
	if e.agent == nil || e.agent.Process == nil {
		return
	}
	_ = e.agent.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = e.agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = e.agent.Process.Kill()
		<-done
	}
	e.agent = nil
}

// client runs argv in the workload namespace and the selected cgroup,
// trusting only the Sluice CA, and returns its pid and output.
func (e *nodeEnv) client(argv ...string) (pid int, out string) {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.wl.Exec(ctx, argv...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + e.dir,
		"SSL_CERT_FILE=" + e.bundle, "CURL_CA_BUNDLE=" + e.bundle, "NODE_EXTRA_CA_CERTS=" + e.bundle, "REQUESTS_CA_BUNDLE=" + e.bundle}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	done := e.cg.Command(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done()
	err := cmd.Wait()
	if err != nil {
		t.Fatalf("%s: %v\n%s\nagent log:\n%s", strings.Join(argv, " "), err, buf.String(), e.logs)
	}
	return cmd.Process.Pid, buf.String()
}

// record waits (bounded) for the audit record of path.
func (e *nodeEnv) record(path string) map[string]any {
	e.t.Helper()
	for i := 0; i < 50; i++ {
		b, _ := os.ReadFile(e.audit)
		for _, line := range bytes.Split(b, []byte("\n")) {
			var m map[string]any
			if json.Unmarshal(line, &m) == nil && m["kind"] == "http" && m["path"] == path {
				return m
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("no audit record for %s\naudit log:\n%s\nagent log:\n%s", path, readFile(e.audit), e.logs)
	return nil
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// Real clients with no proxy configuration reach the API through Sluice:
// each gets the API's body, the API sees Sluice's connection, and the
// audit record names the client's own pid and comm.
func TestClientsThroughAgent(t *testing.T) {
	curl := RequireTool(t, "curl")
	py := RequireTool(t, "python3")
	node := RequireTool(t, "node")
	e := newNodeEnv(t)
	e.startAgent()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, comm, path, proto string
		argv                    []string
	}{
		{"curl http/1.1", "curl", "/curl-h1", "HTTP/1.1", []string{curl, "-sS", "--http1.1", "https://api.test/curl-h1"}},
		{"curl http/2", "curl", "/curl-h2", "HTTP/2.0", []string{curl, "-sS", "--http2", "https://api.test/curl-h2"}},
		{"curl ipv6", "curl", "/curl-v6", "HTTP/2.0", []string{curl, "-sS", "https://api6.test/curl-v6"}},
		{"python urllib", "python3", "/python", "HTTP/1.1", []string{py, "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('https://api.test/python').read().decode())"}},
		{"node fetch", "node", "/node", "", []string{node, "-e", "fetch('https://api.test/node').then(r=>r.text()).then(t=>process.stdout.write(t)).catch(e=>{console.error(e);process.exit(1)})"}},
		{"go net/http", filepath.Base(self), "/go", "HTTP/2.0", []string{"env", "SLUICE_E2E_GET=https://api.test/go", self}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pid, out := e.client(c.argv...)
			if !strings.HasPrefix(out, "hello GET "+c.path+" over ") {
				t.Fatalf("client got %q, want the API's body", out)
			}
			if c.proto != "" && !strings.Contains(out, c.proto) {
				t.Errorf("upstream saw %q, want %s", out, c.proto)
			}
			rec := e.record(c.path)
			comm := c.comm
			if len(comm) > 15 {
				comm = comm[:15]
			}
			if rec["comm"] != comm {
				t.Errorf("record comm = %v, want %s", rec["comm"], comm)
			}
			// `ip netns exec` and `env` exec the client, so the pid is the
			// one we started.
			if got, _ := rec["pid"].(float64); int(got) != pid {
				t.Errorf("record pid = %v, want %d", rec["pid"], pid)
			}
			if rec["cgroup"] != e.cg.Path || rec["decision"] != "allow" || rec["status"] != float64(200) || rec["tls"] != "decrypted" {
				t.Errorf("record = %v", rec)
			}
		})
	}
}

// goClient is the Go client of TestClientsThroughAgent: the test binary
// itself, re-executed with SLUICE_E2E_GET set (see TestMain).
func goClient(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
	return 0
}

// The admin listener serves /readyz, /metrics and the flows of the
// running agent to the node, and `sluice flows` shows the workload's
// egress; a selected workload can't reach it, neither from its own
// network namespace nor from the host's.
func TestAdminFlowsAndIsolation(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newNodeEnv(t)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freeAdminPort(t))
	e.cfg.Admin.Listen = adminAddr
	e.startAgent()

	pid, out := e.client(curl, "-sS", "https://api.test/flows-check")
	if !strings.HasPrefix(out, "hello GET /flows-check") {
		t.Fatalf("client got %q", out)
	}
	e.record("/flows-check")

	// The node reads the admin API.
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	// The agent reads connect events in batches, at least every 20ms: wait
	// (bounded) for the client's to be counted.
	var metrics []byte
	start := time.Now()
	for {
		resp, err = http.Get("http://" + adminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(metrics), `sluice_agent_connect_events_total{decision="redirected"}`) || time.Since(start) > 2*time.Second {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		`sluice_proxy_requests_total{code="200",decision="allow",host="api.test",method="GET",source="upstream",workload="` + e.cg.Path + `"} 1`,
		`sluice_agent_connect_events_total{decision="redirected"}`,
		// The proxy reports its decrypted handshakes and open connections.
		`sluice_proxy_tls_connections_total{mode="decrypted"} 1`,
		"sluice_proxy_open_connections ",
		`sluice_ca_leaf_issued_total 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// `sluice flows --json` names the client's process and destination.
	raw, err := exec.Command(sluiceBin, "flows", "--agent", adminAddr, "--json").Output()
	if err != nil {
		t.Fatalf("sluice flows: %v", err)
	}
	var snap struct {
		Rows []struct {
			PID          int    `json:"pid"`
			Comm         string `json:"comm"`
			Requests     int    `json:"requests"`
			Destinations []struct {
				Host string `json:"host"`
			} `json:"destinations"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatalf("sluice flows --json: %v: %s", err, raw)
	}
	found := false
	for _, r := range snap.Rows {
		if r.PID == pid && r.Comm == "curl" && r.Requests == 1 && len(r.Destinations) == 1 && r.Destinations[0].Host == "api.test" {
			found = true
		}
	}
	if !found {
		t.Errorf("sluice flows does not show curl (pid %d) -> api.test: %s", pid, raw)
	}
	table, err := exec.Command(sluiceBin, "flows", "--agent", adminAddr).Output()
	if err != nil || !strings.Contains(string(table), "curl") || !strings.Contains(string(table), "api.test") {
		t.Errorf("sluice flows table: %v\n%s", err, table)
	}

	// The hooks refuse a selected workload's connect to the admin
	// address and port in any namespace (EPERM): in the workload's own
	// namespace, where 127.0.0.1 is its own loopback and nothing listens
	// there (ECONNREFUSED without the deny), and in the host's, where the
	// admin listener is.
	port := strings.Split(adminAddr, ":")[1]
	for _, inWorkloadNS := range []bool{true, false} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		argv := []string{RequireTool(t, "python3"), "-c", `
import socket, sys, errno
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
`, port}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		where := "the host namespace"
		if inWorkloadNS {
			cmd = e.wl.Exec(ctx, argv...)
			where = "its own namespace"
		}
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		done := e.cg.Command(t, cmd)
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		done()
		_ = cmd.Wait()
		cancel()
		if got := strings.TrimSpace(buf.String()); got != "EPERM" {
			t.Errorf("a selected workload in %s connecting to 127.0.0.1:%s: %q, want EPERM", where, port, got)
		}
	}
}
