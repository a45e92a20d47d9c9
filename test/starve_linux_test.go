package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// One workload opens 10,000 idle connections through a node agent. It gets
// proxy.maxConnectionsPerWorkload of them, the rest are refused and
// recorded, and the agent keeps its descriptors: another workload is
// still served at once and /metrics still answers.
func TestAgentOneWorkloadCannotStarveOthers(t *testing.T) {
	RequireE2E(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	tp := NewTopology(t, 2)
	wl, api := tp.Hosts[0], tp.Hosts[1]
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "served\n") })
	up := StartUpstream(t, &api.NS, []netip.AddrPort{netip.AddrPortFrom(api.IP4, 443)}, mux, "api.test")
	idle := api.NS.Listen(t, netip.AddrPortFrom(api.IP4, 9000))
	go func() { // holds every connection it gets, silent
		var held []net.Conn
		for {
			c, err := idle.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	greedy, other := NewCgroup(t, mount), NewCgroup(t, mount)

	dir := t.TempDir()
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := adminLn.Addr().String()
	adminLn.Close()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	cfg.Agent = testAgentConfig()
	cfg.Agent.Ports = []string{"all"}
	cfg.Agent.Cgroups = []string{greedy.Path, other.Path}
	cfg.Proxy.UpstreamCA = up.CAFile
	cfg.Proxy.MaxConnections = 8000
	cfg.Proxy.MaxConnectionsPerWorkload = 1000
	cfg.Admin.Listen = adminAddr
	t.Cleanup(func() { _ = agent.Cleanup(cfg.Agent, nil) })
	proc := startAgentProc(t, cfg, dir)
	t.Cleanup(func() { _ = proc.stop() })
	logs := proc.Logs
	get := func(path string) (int, string, time.Duration) {
		start := time.Now()
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			return 0, err.Error(), time.Since(start)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), time.Since(start)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if code, _, _ := get("/readyz"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready; its log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	hog := startAttacker(t, wl, greedy, attack{Op: "hold", Dst: netip.AddrPortFrom(api.IP4, 9000), Count: 10000})
	hog.ready()

	// The other workload: curl, trusting Sluice's CA, inside its own cgroup.
	curl := mustLookPath(t, "curl")
	serve := func() (string, float64) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c := wl.Exec(ctx, curl, "-sS", "--cacert", filepath.Join(cfg.CA.Dir, "ca.crt"), "--resolve", "api.test:443:"+api.IP4.String(),
			"-w", "%{time_total}", "https://api.test/other")
		done := other.Command(t, c)
		out, err := func() ([]byte, error) { defer done(); return c.Output() }()
		if err != nil {
			t.Fatalf("the other workload's curl: %v: %s", err, out)
		}
		body, secs, _ := strings.Cut(string(out), "\n")
		s, _ := strconv.ParseFloat(secs, 64)
		return body, s
	}
	body, secs := serve()
	if body != "served" {
		t.Fatalf("the other workload got %q", body)
	}
	// A warm second request: the proxy's own work, without its first TLS
	// handshakes with a new upstream.
	_, secs2 := serve()
	t.Logf("the other workload served in %.1f ms (first) and %.1f ms (second) while the greedy one holds its connections", secs*1000, secs2*1000)
	if secs2 > 0.1 {
		t.Errorf("the other workload waited %.0f ms; want it served within 100 ms", secs2*1000)
	}
	code, metrics, took := get("/metrics")
	if code != 200 || !strings.Contains(metrics, "sluice_") {
		t.Fatalf("/metrics: %d after %s", code, took)
	}
	t.Logf("/metrics answered in %s", took)
	hog.proceed()
	r := hog.result()
	if r.Held != 10000 {
		t.Errorf("the greedy workload connected %d times (%s), want 10000 (the agent accepts and then refuses)", r.Held, r.Errno)
	}
	// The refusals are recorded against the greedy workload.
	audit, err := os.ReadFile(cfg.Audit.File)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, l := range strings.Split(string(audit), "\n") {
		if strings.Contains(l, `"reason":"too many connections"`) && strings.Contains(l, fmt.Sprintf(`"cgroup":%q`, greedy.Path)) {
			refused++
		}
	}
	if refused < 9000-1 {
		t.Errorf("%d refusals recorded for the greedy workload, want about 9000", refused)
	}
	if strings.Contains(logs.String(), "too many open files") {
		t.Errorf("the agent ran out of descriptors:\n%s", logs.String())
	}
}
