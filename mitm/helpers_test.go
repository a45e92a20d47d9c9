package mitm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
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
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

// testCA is the upstreams' own CA, trusted by the proxy through
// proxy.upstreamCA and by nobody else.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf issues a server certificate for names (DNS names or IP literals).
func (c *testCA) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if a, err := netip.ParseAddr(n); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// upstream is a TLS test server for api.test (and 127.0.0.1).
type upstream struct {
	*httptest.Server
	addr netip.AddrPort
	cert tls.Certificate
}

func startUpstream(t testing.TB, tca *testCA, h2 bool, h http.Handler) *upstream {
	t.Helper()
	return startUpstreamWith(t, tca, h2, h, nil)
}

// startUpstreamWith lets setup adjust the server before it starts.
func startUpstreamWith(t testing.TB, tca *testCA, h2 bool, h http.Handler, setup func(*httptest.Server)) *upstream {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	if setup != nil {
		setup(srv)
	}
	cert := tca.leaf(t, "api.test", "other.test", "pass.test", "multi.test", "127.0.0.1")
	if srv.TLS == nil {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	} else {
		cert = srv.TLS.Certificates[0]
	}
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &upstream{Server: srv, addr: netip.MustParseAddrPort(srv.Listener.Addr().String()), cert: cert}
}

func startPlainUpstream(t testing.TB, h http.Handler) *upstream {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &upstream{Server: srv, addr: netip.MustParseAddrPort(srv.Listener.Addr().String())}
}

// records collects audit records.
type records struct {
	mu   sync.Mutex
	recs []audit.Record
	ch   chan struct{}
}

func newRecords() *records { return &records{ch: make(chan struct{}, 1)} }

func (r *records) Record(rec *audit.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, *rec)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

// wait returns the first record matching match, failing after 10s.
func (r *records) wait(t testing.TB, what string, match func(audit.Record) bool) audit.Record {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, rec := range r.recs {
			if match(rec) {
				r.mu.Unlock()
				return rec
			}
		}
		r.mu.Unlock()
		select {
		case <-r.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no audit record %s; have %+v", what, r.recs)
		}
	}
}

func (r *records) all() []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Record(nil), r.recs...)
}

// mapResolver resolves test names to loopback.
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

var loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

var testResolver = mapResolver{
	"api.test":   loopback,
	"other.test": loopback,
	"pass.test":  loopback,
	"deny.test":  loopback,
	"bad.test":   loopback,
}

// fakeDecider lets a test choose decisions.
type fakeDecider struct {
	conn func(*policy.Conn) policy.ConnDecision
	req  func(*policy.Request) policy.Decision

	mu    sync.Mutex
	conns []*policy.Conn // as asked: a Conn does not change once given to a Decider
	reqs  []policy.Request
}

func (d *fakeDecider) Connection(_ context.Context, c *policy.Conn) policy.ConnDecision {
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	if d.conn != nil {
		return d.conn(c)
	}
	return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows"}}
}

func (d *fakeDecider) Request(_ context.Context, r *policy.Request) policy.Decision {
	d.mu.Lock()
	d.reqs = append(d.reqs, *r)
	d.mu.Unlock()
	if d.req != nil {
		return d.req(r)
	}
	return policy.Decision{Rule: "test", Reason: "test allows"}
}

func (d *fakeDecider) connections() []*policy.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*policy.Conn(nil), d.conns...)
}

func (d *fakeDecider) requests() []policy.Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]policy.Request(nil), d.reqs...)
}

// harness is a proxy with its explicit listener on loopback.
type harness struct {
	p      *Proxy
	ca     *ca.Authority
	recs   *records
	url    *url.URL
	bundle string // Sluice CA bundle path
	cfg    config.Proxy
	dec    *fakeDecider
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

type harnessOpt func(*config.Proxy, *Deps)

func newHarness(t testing.TB, tca *testCA, dec policy.Decider, opts ...harnessOpt) *harness {
	t.Helper()
	return newHarnessWith(t, tca, dec, nil, opts...)
}

// newHarnessWith is newHarness with setup run on the proxy before it
// serves: a change to its chain made once it serves would race its
// requests.
func newHarnessWith(t testing.TB, tca *testCA, dec policy.Decider, setup func(*Proxy), opts ...harnessOpt) *harness {
	t.Helper()
	dir := t.TempDir()
	upCA := filepath.Join(dir, "upstream-ca.pem")
	if tca != nil {
		if err := os.WriteFile(upCA, tca.pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	auth, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "sluice-ca.pem")
	if err := os.WriteFile(bundle, auth.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.DefaultProxy()
	if tca != nil {
		cfg.UpstreamCA = upCA
	}
	cfg.ResponseHeaderTimeout = config.Duration(10 * time.Second)
	recs := newRecords()
	cur := &policy.Current{}
	fd, _ := dec.(*fakeDecider)
	if dec == nil {
		fd = &fakeDecider{}
		dec = fd
	}
	cur.Store(dec)
	deps := Deps{CA: auth, Policy: cur, Audit: recs, Resolver: testResolver,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if testing.Verbose() {
		deps.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	p, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(p)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{p: p, ca: auth, recs: recs, bundle: bundle, cfg: cfg, dec: fd, cancel: cancel, done: make(chan error, 1)}
	h.url, _ = url.Parse("http://" + ln.Addr().String())
	go func() { h.done <- p.ServeExplicit(ctx, ln) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.once.Do(func() {
		h.cancel()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			panic("ServeExplicit did not return within 10s of cancel")
		}
		h.p.Close()
	})
}

// client is a Go client using the explicit proxy and trusting Sluice's CA.
func (h *harness) client(h2 bool) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	tr := &http.Transport{
		Proxy:             http.ProxyURL(h.url),
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: h2,
		DisableKeepAlives: false,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return fmt.Sprintf("%x", s[:])
}

func readAll(t testing.TB, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

func netipPortMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// deadlineConn records the read deadlines set on it in log and passes
// them on to Conn when there is one.
type deadlineConn struct {
	net.Conn
	log *deadlineLog
}

func (c deadlineConn) SetReadDeadline(t time.Time) error {
	c.log.mu.Lock()
	c.log.set = append(c.log.set, t)
	c.log.mu.Unlock()
	if c.Conn == nil {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// deadlineLog is the read deadlines set on deadlineConns, in order.
type deadlineLog struct {
	mu  sync.Mutex
	set []time.Time
}

func (l *deadlineLog) times() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.set)
}

func (l *deadlineLog) reset() {
	l.mu.Lock()
	l.set = nil
	l.mu.Unlock()
}

// acceptEach serves every connection ln accepts with serve, each on a
// goroutine of its own, until ln is closed.
func acceptEach(ln net.Listener, serve func(c net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
}

// tcpPair is the two ends of a loopback TCP connection, closed with the
// test.
func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if server, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
