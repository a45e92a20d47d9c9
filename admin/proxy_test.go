package admin_test

// Real traffic through the explicit proxy (mitm) to a loopback upstream,
// then a scrape of /metrics and /api/flows from the admin server: the
// observation parts wired as the agent wires them.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/mitm"
	"github.com/sluicehq/sluice/policy"
)

// upstreamTLS makes a CA and a server certificate for the given names.
func upstreamTLS(t *testing.T, names ...string) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upstream test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range names {
		if a, err := netip.ParseAddr(n); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type loopResolver struct{}

func (loopResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	switch host {
	case "api.test", "pass.test", "deny.test":
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// testPolicy: pass.test passes through, deny.test is refused, /limited is
// rate limited (429), /forbidden denied; the rest allowed.
type testPolicy struct{}

func (testPolicy) Connection(_ context.Context, c *policy.Conn) policy.ConnDecision {
	switch c.Host {
	case "pass.test":
		return policy.ConnDecision{Action: policy.Passthrough, Decision: policy.Decision{Rule: "banks", Reason: "passthrough host"}}
	case "deny.test":
		return policy.ConnDecision{Action: policy.Reject, Decision: policy.Decision{Verdict: policy.Deny, Rule: "no-deny", Reason: "host denied"}}
	}
	return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "default", Reason: "allowed"}}
}

func (testPolicy) Request(_ context.Context, r *policy.Request) policy.Decision {
	switch r.Path {
	case "/limited":
		return policy.Decision{Verdict: policy.Deny, Status: http.StatusTooManyRequests, Rule: "llm-rate", Reason: "rate limit exceeded",
			Header: http.Header{"Retry-After": {"1"}}}
	case "/forbidden":
		return policy.Decision{Verdict: policy.Deny, Rule: "paths", Reason: "path denied"}
	}
	return policy.Decision{Rule: "default", Reason: "allowed"}
}

// countingSink counts records, so the test knows when the proxy is done.
type countingSink struct {
	mu sync.Mutex
	n  int
}

func (c *countingSink) Record(*audit.Record) { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *countingSink) count() int           { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

func TestMetricsAfterProxyTraffic(t *testing.T) {
	dir := t.TempDir()
	upCAPEM, upCert := upstreamTLS(t, "api.test", "pass.test", "127.0.0.1")
	upCA := filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(upCA, upCAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("b", 1000)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, body)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{upCert}}
	up.StartTLS()
	defer up.Close()
	upPort := netip.MustParseAddrPort(up.Listener.Addr().String()).Port()

	auth, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{})
	m.SetLeafStats(func() metrics.LeafStats {
		s := auth.Stats()
		return metrics.LeafStats{Size: s.Size, Hits: s.Hits, Misses: s.Misses, Issued: s.Issued}
	})
	tb := flows.New(flows.Options{})
	var combined bytes.Buffer
	var combinedMu sync.Mutex
	counter := &countingSink{}
	sink := audit.Multi{m, tb, audit.NewCombinedLog(lockedWriter{&combined, &combinedMu}), counter}

	cur := &policy.Current{}
	cur.Store(testPolicy{})
	cfg := config.DefaultProxy()
	cfg.UpstreamCA = upCA
	p, err := mitm.New(cfg, mitm.Deps{CA: auth, Policy: cur, Audit: sink, Resolver: loopResolver{},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.ServeExplicit(ctx, ln) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeExplicit did not stop")
		}
	}()

	gate := admin.NewGate("proxy listening")
	adm := httptest.NewServer(admin.New(admin.Options{Registry: m.Registry(), Ready: gate.Err, Flows: tb}).Handler())
	defer adm.Close()
	gate.Done("proxy listening")

	proxyURL, _ := url.Parse("http://" + ln.Addr().String())
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(auth.BundlePEM())
	roots.AppendCertsFromPEM(upCAPEM) // for the passthrough host, which shows the upstream's own certificate
	newClient := func(roots *x509.CertPool) *http.Client {
		return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
			Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: roots},
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1
		}}
	}
	client := newClient(roots)
	defer client.CloseIdleConnections()

	wantStatus := func(u string, status int) {
		t.Helper()
		resp, err := client.Post(u, "text/plain", strings.NewReader("hello upstream"))
		if err != nil {
			t.Fatalf("POST %s: %v", u, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Fatalf("POST %s: %d, want %d", u, resp.StatusCode, status)
		}
	}
	api := fmt.Sprintf("https://api.test:%d", upPort)
	for range 3 {
		wantStatus(api+"/ok", 200)
	}
	wantStatus(api+"/limited", 429)
	wantStatus(api+"/limited", 429)
	wantStatus(api+"/forbidden", 403)
	client.CloseIdleConnections()
	// TLS passthrough: one L4 flow.
	wantStatus(fmt.Sprintf("https://pass.test:%d/ok", upPort), 200)
	client.CloseIdleConnections()
	// A refused host: the CONNECT tunnel is closed, one denied L4 flow.
	if _, err := client.Get(fmt.Sprintf("https://deny.test:%d/", upPort)); err == nil {
		t.Fatal("deny.test answered")
	}
	// A client that does not trust Sluice's CA: a failed handshake.
	untrusting := newClient(x509.NewCertPool())
	if _, err := untrusting.Get(api + "/ok"); err == nil {
		t.Fatal("client without Sluice's CA completed a request")
	}
	untrusting.CloseIdleConnections()

	// 6 HTTP records + passthrough + deny + failed handshake.
	deadline := time.Now().Add(10 * time.Second)
	for counter.count() < 9 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := counter.count(); n != 9 {
		t.Fatalf("audit records = %d, want 9", n)
	}

	resp, err := http.Get(adm.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(raw)
	want := []string{
		`sluice_proxy_requests_total{code="200",decision="allow",host="api.test",method="POST",source="upstream",workload="unknown"} 3`,
		`sluice_proxy_requests_total{code="429",decision="deny",host="api.test",method="POST",source="sluice",workload="unknown"} 2`,
		`sluice_proxy_requests_total{code="403",decision="deny",host="api.test",method="POST",source="sluice",workload="unknown"} 1`,
		`sluice_proxy_request_duration_seconds_count{decision="allow",host="api.test"} 3`,
		`sluice_proxy_request_duration_seconds_count{decision="deny",host="api.test"} 3`,
		`sluice_proxy_upstream_duration_seconds_count{host="api.test"} 3`,
		`sluice_policy_rate_limited_total{host="api.test",rule="llm-rate",workload="unknown"} 2`,
		`sluice_policy_denials_total{decision="deny",reason="rate limit exceeded",rule="llm-rate"} 2`,
		`sluice_policy_denials_total{decision="deny",reason="path denied",rule="paths"} 1`,
		`sluice_policy_denials_total{decision="deny",reason="host denied",rule="no-deny"} 1`,
		`sluice_proxy_l4_flows_total{decision="allow",host="pass.test",tls="passthrough",workload="unknown"} 1`,
		`sluice_proxy_l4_flows_total{decision="deny",host="deny.test",tls="none",workload="unknown"} 1`,
		`sluice_proxy_l4_flows_total{decision="client_untrusted",host="api.test",tls="decrypted",workload="unknown"} 1`,
		`sluice_proxy_untrusted_clients_total{host="api.test",workload="unknown"} 1`,
		`sluice_proxy_open_connections 0`,
		`sluice_proxy_tls_connections_total{mode="passthrough"} 1`,
		`sluice_proxy_tls_connections_total{mode="failed"} 1`,
		`sluice_ca_leaf_issued_total 1`,
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}
	// Request bytes: 14 per request that reached the upstream ("hello
	// upstream"), and the 1000-byte bodies came back.
	if m := regexp.MustCompile(`sluice_proxy_transferred_bytes_total\{direction="in",host="api.test",kind="http",workload="unknown"\} (\d+)`).FindStringSubmatch(text); m == nil || m[1] != "42" {
		t.Errorf("request bytes to api.test: %v, want 42 (3 × 14)", m)
	}
	// Response bytes: the three 1000-byte bodies and Sluice's JSON deny
	// answers.
	outWant := 3*len(body) + len(testPolicy{}.Request(ctx, &policy.Request{Path: "/limited"}).DenyBody())*2 +
		len(testPolicy{}.Request(ctx, &policy.Request{Path: "/forbidden"}).DenyBody())
	if m := regexp.MustCompile(`sluice_proxy_transferred_bytes_total\{direction="out",host="api.test",kind="http",workload="unknown"\} (\d+)`).FindStringSubmatch(text); m == nil || m[1] != fmt.Sprint(outWant) {
		t.Errorf("response bytes from api.test: %v, want %d", m, outWant)
	}
	if m := regexp.MustCompile(`sluice_proxy_transferred_bytes_total\{direction="out",host="pass.test",kind="l4",workload="unknown"\} (\d+)`).FindStringSubmatch(text); m == nil || m[1] == "0" {
		t.Errorf("passthrough bytes to the client: %v, want the TLS bytes", m)
	}
	if t.Failed() || os.Getenv("SHOW_SCRAPE") != "" {
		t.Logf("scrape:\n%s", grep(text, "sluice_"))
	}

	// The flows API has the client's egress.
	resp, err = http.Get(adm.URL + admin.FlowsPath)
	if err != nil {
		t.Fatal(err)
	}
	var snap flows.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var reqs, flowsN int64
	hosts := map[string]bool{}
	for _, r := range snap.Rows {
		reqs += r.Requests
		flowsN += r.Flows
		for _, d := range r.Destinations {
			hosts[d.Name()] = true
		}
	}
	if reqs != 6 || flowsN != 3 || !hosts["api.test"] || !hosts["pass.test"] || !hosts["deny.test"] {
		t.Errorf("flows: %d requests, %d flows, hosts %v; want 6, 3 and api/pass/deny", reqs, flowsN, hosts)
	}

	// The combined log has one parseable line per record it writes.
	combinedMu.Lock()
	lines := strings.Split(strings.TrimSpace(combined.String()), "\n")
	combinedMu.Unlock()
	re := regexp.MustCompile(`^127\.0\.0\.1 - - \[[^\]]+\] "[^"]*" \d{3} \d+ "[^"]*" "[^"]*" upstream=\S+ rt=\d+\.\d{3} urt=(\d+\.\d{3}|-)$`)
	n429 := 0
	for _, l := range lines {
		if !re.MatchString(l) {
			t.Errorf("combined line does not parse: %s", l)
		}
		if strings.Contains(l, `"POST /limited HTTP/1.1" 429 `) {
			n429++
		}
	}
	if len(lines) != 9 || n429 != 2 {
		t.Errorf("combined log: %d lines (want 9), %d 429s (want 2):\n%s", len(lines), n429, strings.Join(lines, "\n"))
	}
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func grep(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
