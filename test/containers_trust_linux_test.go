package test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/webhook"
)

// The HTTPS upstream of the CA trust tests is this test binary run inside
// a container with SLUICE_E2E_TLS_SERVER set to a listen address and
// SLUICE_E2E_TLS_CERT, SLUICE_E2E_TLS_KEY to its certificate and key
// (PEM): it answers every request with "hello METHOD PATH from HOST".
func init() {
	addr := os.Getenv("SLUICE_E2E_TLS_SERVER")
	if addr == "" {
		return
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s from %s\n", r.Method, r.URL.Path, r.Host)
	})
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintln(os.Stderr, srv.ListenAndServeTLS(os.Getenv("SLUICE_E2E_TLS_CERT"), os.Getenv("SLUICE_E2E_TLS_KEY")))
	os.Exit(1)
}

// The clients of TestContainersTrustSluiceCA, each one GET of the URL in
// its last argument with the runtime's own HTTPS client and default
// trust, printing the body (Java: the status code, then the body).
var trustClients = []struct {
	name string
	argv []string
}{
	{"curl", []string{"curl", "-sS", "--max-time", "20"}},
	{"python", []string{"python3", "-c", `import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())`}},
	{"node", []string{"node", "-e", `require("https").get(process.argv[1], r => r.pipe(process.stdout)).on("error", e => { console.error(e); process.exit(1) })`}},
	{"java", []string{"java", "/client/Client.java"}},
}

// Real Docker containers, selected by label and intercepted by the
// agent, trust the Sluice CA through what `sluice webhook` gives a pod,
// with no change to their image: the bundle and the PKCS#12 trust store
// `sluice ca export` writes (what `sluice webhook bundle` puts in the
// ConfigMap), mounted read-only where the webhook mounts them, and the
// variables of the webhook's patch (ca.TrustEnv, JAVA_TOOL_OPTIONS).
// curl, Python, Node.js and Java each fetch HTTPS from the test's
// upstream, decrypted (the records have their paths), and get its bytes;
// the records name the container and its image.
//
// A container whose curl trusts only the upstream's own CA (as a pinned
// client would) is refused Sluice's certificate: a client_untrusted
// record with the container's name and image; with
// tls.onUntrustedClient: passthrough its next connection to that host is
// relayed undecrypted and succeeds with the upstream's own certificate,
// and its record says passthrough.
//
// The containers resolve api.test through the agent's DNS server (the
// hooks steer their queries to it), which forwards to this test's
// resolver: pass-through trusts the SNI only where the name resolved to
// the address. The image (curl, Python, Node.js, a JDK) is built once
// with debootstrap and cached by tag (runtimePackages).
func TestContainersTrustSluiceCA(t *testing.T) {
	e := newDockerEnv(t, runtimePackages)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // mounted into containers
		t.Fatal(err)
	}

	// The upstream: HTTPS in a container, certificate for api.test from
	// its own CA, which only the proxy (proxy.upstreamCA) and the pinned
	// client trust.
	upDir := filepath.Join(dir, "upstream")
	caPEM, leaf := testPKI(t, []string{"api.test"}, nil)
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, upDir, map[string][]byte{
		"ca.pem":   caPEM,
		"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	upID := e.run(t, "-d", "-e", "SLUICE_E2E_TLS_SERVER=:443", "-e", "SLUICE_E2E_TLS_CERT=/upstream/cert.pem", "-e", "SLUICE_E2E_TLS_KEY=/upstream/key.pem",
		"-v", self+":/tls-server:ro", "-v", upDir+":/upstream:ro", "--entrypoint", "/tls-server", e.image)
	upIP := netip.MustParseAddr(strings.TrimSpace(docker(t, e.bin, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", upID)))
	waitTLSListening(t, e, upID, netip.AddrPortFrom(upIP, 443))
	resolver := startLoopbackResolver(t, map[string]netip.Addr{"api.test": upIP})

	// The agent: selects by label, decrypts, trusts the upstream's CA,
	// forwards the workloads' DNS to the test's resolver.
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	cfg.PolicyFile = filepath.Join(dir, "policy.yaml")
	cfg.Proxy.UpstreamCA = filepath.Join(upDir, "ca.pem")
	cfg.Agent = testAgentConfig()
	cfg.Agent.Select = []config.Select{{Labels: map[string]string{"sluice.e2e/trust": "yes"}}}
	cfg.Agent.Runtime = config.Runtime{Docker: "/var/run/docker.sock", CRI: "off", Kubernetes: "off", CacheSize: 1024}
	cfg.Agent.DNS.Upstreams = []string{resolver.String()}
	if err := os.WriteFile(cfg.PolicyFile, []byte(e2ePolicy+"tls:\n  onUntrustedClient: passthrough\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sluiceBin, "ca", "init", "--dir", cfg.CA.Dir).CombinedOutput(); err != nil {
		t.Fatalf("sluice ca init: %v\n%s", err, out)
	}
	ag := startAgentProc(t, cfg, dir)
	t.Cleanup(func() {
		_ = ag.stop()
		if err := agent.Cleanup(cfg.Agent, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	waitAgentListening(t, cfg.Agent, ag)

	// What the webhook gives a pod, as docker run flags: its bundle files
	// from sluice ca export, mounted read-only, and its variables.
	trustDir := filepath.Join(dir, "trust")
	if err := os.Mkdir(trustDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, format := range map[string]string{webhook.BundleKey: "pem", webhook.TrustStoreKey: "jks"} {
		if out, err := exec.Command(sluiceBin, "ca", "export", "--dir", cfg.CA.Dir, "--format", format, "--with-system-roots",
			"--out", filepath.Join(trustDir, file)).CombinedOutput(); err != nil {
			t.Fatalf("sluice ca export --format %s: %v\n%s", format, err, out)
		}
	}
	trustFlags := webhookDockerFlags(t, trustDir)
	// The containers' resolver is the upstream's address: the hooks
	// steer the query to the agent's DNS server; were they not to, it
	// would still land on the test's container.
	writeFiles(t, filepath.Join(dir, "etc"), map[string][]byte{"resolv.conf": []byte("nameserver " + upIP.String() + "\noptions timeout:2 attempts:3\n")})
	writeFiles(t, filepath.Join(dir, "client"), map[string][]byte{"Client.java": []byte(javaClient)})
	common := []string{"-d", "--label", "sluice.e2e/trust=yes",
		"-v", filepath.Join(dir, "etc", "resolv.conf") + ":/etc/resolv.conf:ro",
		"-v", filepath.Join(dir, "client") + ":/client:ro",
		"-v", upDir + "/ca.pem:/upstream-ca.pem:ro"}

	// All at once: the containers start in parallel, Java's being the
	// slowest.
	ids := map[string]string{}
	names := map[string]string{}
	for _, c := range trustClients {
		names[c.name] = fmt.Sprintf("sluice-e2e-trust-%s-%d", c.name, os.Getpid())
		args := append(append(append([]string{}, common...), "--name", names[c.name]), trustFlags...)
		args = append(append(append(args, e.image), c.argv...), "https://api.test/"+c.name)
		ids[c.name] = e.run(t, args...)
	}
	pinned := fmt.Sprintf("sluice-e2e-trust-pinned-%d", os.Getpid())
	fetch := func(path string) string {
		return fmt.Sprintf(`curl -sS --max-time 20 --cacert /upstream-ca.pem https://api.test%s; echo "[%s exit=$?]"; `, path, path)
	}
	pinnedID := e.run(t, append(append([]string{}, common...), "--name", pinned, e.image, "sh", "-c", fetch("/pinned-first")+fetch("/pinned-second"))...)

	var wg sync.WaitGroup
	outs := map[string]string{}
	codes := map[string]string{}
	var mu sync.Mutex
	for name, id := range map[string]string{"curl": ids["curl"], "python": ids["python"], "node": ids["node"], "java": ids["java"], "pinned": pinnedID} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := exec.Command(e.bin, "wait", id).Output()
			out, _ := exec.Command(e.bin, "logs", id).CombinedOutput()
			mu.Lock()
			defer mu.Unlock()
			codes[name], outs[name] = strings.TrimSpace(string(code)), string(out)
		}()
	}
	wg.Wait()

	var want []func(map[string]any) bool
	for _, c := range trustClients {
		want = append(want, func(r map[string]any) bool { return r["kind"] == "http" && r["path"] == "/"+c.name })
	}
	untrusted := func(r map[string]any) bool { return r["decision"] == "client_untrusted" }
	passed := func(r map[string]any) bool { return r["tls"] == "passthrough" }
	recs := waitRecords(t, cfg.Audit.File, append(want, untrusted, passed)...)
	for i, c := range trustClients {
		body := "hello GET /" + c.name + " from api.test\n"
		if c.name == "java" {
			body = "200\n" + body
		}
		out := outs[c.name]
		if c.name == "java" { // the JVM reports the options it picked up
			if !strings.Contains(out, "Picked up JAVA_TOOL_OPTIONS: -Djavax.net.ssl.trustStore="+webhook.DefaultMountPath+"/"+webhook.TrustStoreKey) {
				t.Errorf("java did not report the webhook's JAVA_TOOL_OPTIONS:\n%s", out)
			}
			out = dropLines(out, "Picked up JAVA_TOOL_OPTIONS: ")
		}
		if codes[c.name] != "0" || out != body {
			t.Errorf("%s in a container: exit %s, output %q, want %q\nagent log:\n%s", c.name, codes[c.name], out, body, ag.Logs)
		}
		r := findRecord(recs, want[i])
		if r == nil {
			t.Errorf("no record of %s's request (decrypted)", c.name)
			continue
		}
		if r["container"] != names[c.name] || r["image"] != e.image || r["container_id"] != ids[c.name] || r["status"] != float64(200) || r["host"] != "api.test" {
			t.Errorf("record of %s's request: %v", c.name, r)
		}
	}

	out := outs["pinned"]
	for _, want := range []string{
		"[/pinned-first exit=60]",                  // curl: the peer certificate cannot be authenticated
		"hello GET /pinned-second from api.test\n", // passed through, end to end
		"[/pinned-second exit=0]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("pinned curl's output lacks %q:\n%s", want, out)
		}
	}
	// One client_untrusted record and one passed through: the pinned
	// curl's; none of the clients given the CA rejected it.
	var us, ps []map[string]any
	for _, r := range recs {
		if untrusted(r) {
			us = append(us, r)
		}
		if passed(r) {
			ps = append(ps, r)
		}
	}
	if len(us) != 1 || len(ps) != 1 {
		t.Errorf("%d client_untrusted and %d passthrough records, want one each (the pinned container's): %v %v", len(us), len(ps), us, ps)
	}
	u := findRecord(recs, untrusted)
	if u == nil || u["container"] != pinned || u["image"] != e.image || u["container_id"] != pinnedID || u["host"] != "api.test" ||
		u["comm"] != "curl" || u["reason"] != "client rejected the Sluice certificate" {
		t.Errorf("client_untrusted record of the pinned container: %v", u)
	}
	p := findRecord(recs, passed)
	if p == nil || p["container"] != pinned || p["image"] != e.image || p["host"] != "api.test" || p["decision"] != "allow" || p["rule"] != "on-untrusted-client" ||
		p["reason"] != "client rejected the Sluice certificate before; passed through" {
		t.Errorf("passthrough record of the pinned container: %v", p)
	}
	for _, r := range recs {
		if r["kind"] == "http" && strings.HasPrefix(fmt.Sprint(r["path"]), "/pinned") {
			t.Errorf("a request of the pinned container was decrypted: %v", r)
		}
	}
	if t.Failed() {
		t.Logf("records:\n%v", recs)
	}
}

// webhookDockerFlags turns what `sluice webhook` patches into a pod with
// one container (its volume mount and variables) into docker run flags,
// mounting dir (the bundle files) where the webhook mounts the ConfigMap.
func webhookDockerFlags(t *testing.T, dir string) []string {
	t.Helper()
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
	var flags []string
	for _, op := range webhook.Patch(pod, webhook.Options{}) {
		switch v := op.Value.(type) {
		case []corev1.VolumeMount:
			for _, m := range v {
				if !m.ReadOnly {
					t.Fatalf("webhook mounts %s read-write", m.MountPath)
				}
				flags = append(flags, "-v", dir+":"+m.MountPath+":ro")
			}
		case []corev1.EnvVar:
			for _, ev := range v {
				flags = append(flags, "-e", ev.Name+"="+ev.Value)
			}
		case corev1.EnvVar:
			flags = append(flags, "-e", v.Name+"="+v.Value)
		case []corev1.Volume, corev1.Volume: // the ConfigMap: dir stands for it
		default:
			t.Fatalf("webhook patch op %s %s: value %T not handled", op.Op, op.Path, op.Value)
		}
	}
	if !strings.Contains(strings.Join(flags, " "), "JAVA_TOOL_OPTIONS=") {
		t.Fatalf("webhook patch has no JAVA_TOOL_OPTIONS: %v", flags)
	}
	return flags
}

// startLoopbackResolver serves A records for names (UDP and TCP) on a
// loopback port of the host until the test ends, and returns its address
// (what agent.dns.upstreams forwards to); other names get NXDOMAIN, and
// AAAA queries for names an empty answer.
func startLoopbackResolver(t *testing.T, names map[string]netip.Addr) netip.AddrPort {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		qq := q.Question[0]
		a, ok := names[strings.TrimSuffix(strings.ToLower(qq.Name), ".")]
		switch {
		case ok && qq.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
		case !ok:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	// One port for both: the TCP side of the port UDP picked may be
	// taken (a client's ephemeral port), then another is tried.
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("listen on one loopback port over UDP and TCP: %v", err)
	}
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return addr
}

// waitTLSListening waits (bounded) until the HTTPS upstream in container
// id completes a TLS handshake at addr.
func waitTLSListening(t *testing.T, e *dockerEnv, id string, addr netip.AddrPort) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 200 * time.Millisecond}, "tcp", addr.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only a readiness probe
		if err == nil {
			c.Close()
			return
		}
		if i == 50 {
			t.Fatalf("HTTPS upstream %s did not listen: %v\n%s", addr, err, docker(t, e.bin, "logs", id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeFiles writes files (name: content, mode 0644) into dir, made 0755.
func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// waitRecords reads the audit log until it has a record each of want
// accepts (bounded: records are written as connections end), and
// returns its records.
func waitRecords(t *testing.T, path string, want ...func(map[string]any) bool) []map[string]any {
	t.Helper()
	for i := 0; ; i++ {
		recs := readRecords(t, path)
		missing := false
		for _, ok := range want {
			missing = missing || findRecord(recs, ok) == nil
		}
		if !missing || i == 50 {
			return recs
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// findRecord returns the first record ok accepts, or nil.
func findRecord(recs []map[string]any, ok func(map[string]any) bool) map[string]any {
	for _, r := range recs {
		if ok(r) {
			return r
		}
	}
	return nil
}

// dropLines removes the lines of s that start with prefix.
func dropLines(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(l, prefix) {
			b.WriteString(l)
		}
	}
	return b.String()
}
