package test

import (
	"bytes"
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

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
)

// The peer server is this test binary run inside a container with
// SLUICE_E2E_PEER_SERVER set to a listen address: it answers every HTTP
// request with "peer IP PATH", naming the address the connection came
// from, so a test tells a connection the proxy made (from the host)
// from one the client made itself (from its own container).
func init() {
	if addr := os.Getenv("SLUICE_E2E_PEER_SERVER"); addr != "" {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "peer %s %s\n", host, r.URL.Path)
		})
		srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintln(os.Stderr, srv.ListenAndServe())
		os.Exit(1)
	}
}

// dockerEnv is a docker network of the test's own, in the daemon's
// address pool inside 198.18.0.0/15, with a peer server container on it
// (the image has the Debian packages given);
// every container and the network are removed by id at the end.
type dockerEnv struct {
	bin     string
	image   string
	network string
	server  netip.Addr
	gateway netip.Addr
}

func newDockerEnv(t *testing.T, packages []string) *dockerEnv {
	t.Helper()
	RequireE2E(t)
	e := &dockerEnv{bin: requireDocker(t)}
	e.image = rootfsImage(t, e.bin, packages)
	e.network = strings.TrimSpace(docker(t, e.bin, "network", "create", fmt.Sprintf("sluice-e2e-%d", os.Getpid())))
	t.Cleanup(func() { _ = exec.Command(e.bin, "network", "rm", e.network).Run() })
	var ipam struct {
		Config []struct{ Subnet, Gateway string }
	}
	if err := json.Unmarshal([]byte(docker(t, e.bin, "network", "inspect", "--format", "{{json .IPAM}}", e.network)), &ipam); err != nil || len(ipam.Config) == 0 {
		t.Fatalf("network ipam: %v %+v", err, ipam)
	}
	subnet := netip.MustParsePrefix(ipam.Config[0].Subnet)
	// Whatever goes direct must still land on a host of this test.
	if !netip.MustParsePrefix("198.18.0.0/15").Contains(subnet.Addr()) {
		t.Fatalf("docker network %s: subnet %s is outside 198.18.0.0/15: start dockerd as .ci/run does", e.network, subnet)
	}
	e.gateway = netip.MustParseAddr(ipam.Config[0].Gateway)

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	id := e.run(t, "-d", "-e", "SLUICE_E2E_PEER_SERVER=:80", "-v", self+":/peer-server:ro", "--entrypoint", "/peer-server", e.image)
	ip := strings.TrimSpace(docker(t, e.bin, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id))
	e.server = netip.MustParseAddr(ip)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(e.server, 80).String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if i == 50 {
			t.Fatalf("peer server %s did not listen: %v\n%s", e.server, err, docker(t, e.bin, "logs", id))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return e
}

// run starts a container on the test's network (docker run args…) and
// removes it by id at the end of t; it returns the id.
func (e *dockerEnv) run(t *testing.T, args ...string) string {
	t.Helper()
	id := strings.TrimSpace(docker(t, e.bin, append([]string{"run", "--network", e.network}, args...)...))
	t.Cleanup(func() { _ = exec.Command(e.bin, "rm", "-f", id).Run() })
	return id
}

// curl runs curl in a new container with labels and name, asking the
// peer server for path, and returns the container id and what curl
// printed (the status code last).
func (e *dockerEnv) curl(t *testing.T, name string, labels map[string]string, path string) (id, out string) {
	t.Helper()
	args := []string{"-d", "--name", name}
	for k, v := range labels {
		args = append(args, "--label", k+"="+v)
	}
	url := fmt.Sprintf("http://%s%s", e.server, path)
	id = e.run(t, append(args, e.image, "curl", "-sS", "--max-time", "10", "-w", "%{http_code}\n", url)...)
	if code := strings.TrimSpace(docker(t, e.bin, "wait", id)); code != "0" {
		t.Fatalf("curl in %s exited %s:\n%s", name, code, docker(t, e.bin, "logs", id))
	}
	return id, docker(t, e.bin, "logs", id)
}

// A Docker container is selected by its label, intercepted from its
// first connect (it connects as soon as it starts), and its records name
// it, its image and its labels; a container started with the labels the
// kubelet sets is attributed to its pod and namespace, selected by
// agent.select namespaces and matched by a policy workloads.namespaces
// rule; a container nothing selects goes direct. In both attach modes:
// hooks on the container's cgroup, or its id in the selection map.
func TestContainersByRuntimeMetadata(t *testing.T) {
	e := newDockerEnv(t, rootfsPackages)
	for _, attach := range []string{"cgroup", "root"} {
		t.Run(attach, func(t *testing.T) { testContainersByRuntimeMetadata(t, e, attach) })
	}
}

func testContainersByRuntimeMetadata(t *testing.T, e *dockerEnv, attach string) {
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.jsonl")
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = auditLog
	cfg.PolicyFile = filepath.Join(dir, "policy.yaml")
	cfg.Agent = testAgentConfig()
	cfg.Agent.Attach = attach
	cfg.Agent.Select = []config.Select{{Labels: map[string]string{"sluice.e2e/intercept": "yes"}}, {Namespaces: []string{"e2e-shop*"}}}
	cfg.Agent.Runtime = config.Runtime{Docker: "/var/run/docker.sock", CRI: "off", Kubernetes: "off", CacheSize: 1024}
	policy := e2ePolicy + `  - name: shop-no-secret
    workloads: {namespaces: [e2e-shop]}
    destinations: {paths: [/secret]}
    action: deny
`
	if err := os.WriteFile(cfg.PolicyFile, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	ag := startAgentProc(t, cfg, dir)
	t.Cleanup(func() {
		_ = ag.stop()
		if err := agent.Cleanup(cfg.Agent, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	waitAgentListening(t, cfg.Agent, ag)

	// Selected by label: the request reaches the server from the host
	// (the proxy), and the record names the container.
	name := fmt.Sprintf("sluice-e2e-labelled-%s-%d", attach, os.Getpid())
	id, out := e.curl(t, name, map[string]string{"sluice.e2e/intercept": "yes", "team": "blue"}, "/labelled")
	if want := fmt.Sprintf("peer %s /labelled\n200\n", e.gateway); out != want {
		t.Errorf("labelled container got %q, want %q (from the host: intercepted)\nagent log:\n%s", out, want, ag.Logs)
	}
	rec := waitRecord(t, auditLog, "/labelled", ag)
	labels, _ := rec["labels"].(map[string]any)
	if rec["container"] != name || rec["image"] != e.image || rec["container_id"] != id || labels["team"] != "blue" || labels["sluice.e2e/intercept"] != "yes" || rec["workload"] != "container:"+name {
		t.Errorf("record of the labelled container: %v", rec)
	}

	// Started with the kubelet's labels: a pod in namespace e2e-shop,
	// selected by namespace, and denied /secret by the namespace's rule.
	kubelet := map[string]string{
		"io.kubernetes.pod.name": "shop-0", "io.kubernetes.pod.namespace": "e2e-shop",
		"io.kubernetes.pod.uid": "5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", "io.kubernetes.container.name": "app",
	}
	_, out = e.curl(t, fmt.Sprintf("k8s_app_shop-0_e2e-shop_%s_%d", attach, os.Getpid()), kubelet, "/secret")
	if !strings.HasSuffix(out, "\n403\n") || !strings.Contains(out, "shop-no-secret") {
		t.Errorf("pod container asking /secret got %q, want 403 from rule shop-no-secret\nagent log:\n%s", out, ag.Logs)
	}
	rec = waitRecord(t, auditLog, "/secret", ag)
	if rec["pod"] != "shop-0" || rec["namespace"] != "e2e-shop" || rec["container"] != "app" || rec["rule"] != "shop-no-secret" || rec["decision"] != "deny" || rec["workload"] != "e2e-shop/shop-0" {
		t.Errorf("record of the pod's container: %v", rec)
	}

	// logs summarize names them too.
	sum, err := exec.Command(sluiceBin, "logs", "summarize", "--json", auditLog).Output()
	if err != nil {
		t.Fatalf("sluice logs summarize: %v", err)
	}
	var summary struct {
		TopWorkloads struct {
			Rows []struct{ Name, Namespace, Pod, Container, Image string }
		} `json:"top_workloads"`
	}
	if err := json.Unmarshal(sum, &summary); err != nil {
		t.Fatalf("summary: %v\n%s", err, sum)
	}
	found := map[string]string{}
	for _, r := range summary.TopWorkloads.Rows {
		found[r.Name] = r.Namespace + "|" + r.Pod + "|" + r.Container + "|" + r.Image
	}
	if found["container:"+name] != "||"+name+"|"+e.image || found["e2e-shop/shop-0"] != "e2e-shop|shop-0|app|"+e.image {
		t.Errorf("logs summarize top workloads: %v\n%s", found, sum)
	}

	// Selected by nothing: direct, from its own address, no record.
	_, out = e.curl(t, fmt.Sprintf("sluice-e2e-plain-%s-%d", attach, os.Getpid()), map[string]string{"team": "blue"}, "/plain")
	if strings.Contains(out, "peer "+e.gateway.String()+" ") || !strings.HasSuffix(out, "\n200\n") {
		t.Errorf("unselected container got %q: want the server to see the container's own address", out)
	}
	time.Sleep(300 * time.Millisecond)
	if b, _ := os.ReadFile(auditLog); bytes.Contains(b, []byte(`"/plain"`)) {
		t.Errorf("an unselected container's request was recorded:\n%s", b)
	}
}

// waitAgentListening waits (bounded) until the agent's proxy accepts,
// never dialling the intercept address before it is local.
func waitAgentListening(t *testing.T, a config.Agent, ag *agentProc) {
	t.Helper()
	addr := netip.AddrPortFrom(a.InterceptIPv4, a.ProxyPort).String()
	for i := 0; i < 150; i++ {
		if routedLocal(a.InterceptIPv4) {
			if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
				c.Close()
				return
			}
		}
		select {
		case <-ag.exited:
			t.Fatalf("sluice agent exited: %v\n%s", ag.err, ag.Logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("sluice agent did not listen on %s:\n%s", addr, ag.Logs)
}

// waitRecord waits (bounded) for the http record of path in the audit log.
func waitRecord(t *testing.T, auditLog, path string, ag *agentProc) map[string]any {
	t.Helper()
	for i := 0; i < 60; i++ {
		b, _ := os.ReadFile(auditLog)
		for _, line := range bytes.Split(b, []byte("\n")) {
			var m map[string]any
			if json.Unmarshal(line, &m) == nil && m["kind"] == "http" && m["path"] == path {
				return m
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no audit record for %s\naudit log:\n%s\nagent log:\n%s", path, readFile(auditLog), ag.Logs)
	return nil
}
