package mitm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

func untrustedPolicy(t *testing.T, on string) policy.Decider {
	t.Helper()
	e, err := policy.Parse([]byte(fmt.Sprintf(`version: 1
ssrf: {allowCIDRs: ["127.0.0.0/8"]}
tls: {onUntrustedClient: %s}
`, on)), "untrusted.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// getAs makes one HTTPS GET through the transparent proxy as id, trusting
// roots, and returns the issuer of the leaf it saw and the body (or the
// handshake error).
func getAs(t *testing.T, h *harness, up *upstream, id workload.Identity, sni string, roots *x509.CertPool) (issuer, body string, err error) {
	t.Helper()
	c := transparent(t, h, Destination{Addr: up.addr}, id)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		return "", "", err
	}
	defer tc.Close()
	issuer = tc.ConnectionState().PeerCertificates[0].Issuer.CommonName
	fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	b, _ := io.ReadAll(tc)
	return issuer, string(b), nil
}

// A client without the Sluice CA rejects the leaf: the record says
// client_untrusted with the process and the host. With
// tls.onUntrustedClient passthrough its next connection to that host is
// passed through (the upstream's own certificate, end to end), and the
// record says why; the same workload's other hosts, and other workloads
// on that host, are still decrypted.
func TestClientUntrustedThenPassthrough(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, untrustedPolicy(t, "passthrough"))
	pinned := workload.Identity{PID: 31, Comm: "pinned", Exe: "/usr/bin/pinned", Cgroup: "/test.slice/pinned.scope"}
	other := workload.Identity{PID: 32, Comm: "curl", Exe: "/usr/bin/curl", Cgroup: "/test.slice/other.scope"}
	upstreamOnly := x509.NewCertPool()
	upstreamOnly.AppendCertsFromPEM(tca.pem)
	sluiceRoots := x509.NewCertPool()
	sluiceRoots.AppendCertsFromPEM(h.ca.BundlePEM())

	if _, _, err := getAs(t, h, up, pinned, "api.test", upstreamOnly); err == nil {
		t.Fatal("a client that trusts only the upstream's CA accepted Sluice's leaf")
	}
	rec := h.recs.wait(t, "client_untrusted", func(r audit.Record) bool { return r.Decision == audit.DecisionClientUntrusted })
	if rec.Reason != audit.ReasonClientUntrusted || rec.Host != "api.test" || rec.Workload.PID != 31 || rec.Workload.Comm != "pinned" ||
		rec.TLS != audit.TLSDecrypted || !strings.Contains(rec.Error, "certificate") {
		t.Errorf("record %+v", rec)
	}

	issuer, body, err := getAs(t, h, up, pinned, "api.test", upstreamOnly)
	if err != nil || issuer != "upstream test CA" || !strings.Contains(body, "GET /x") {
		t.Fatalf("next connection: issuer %q, body %q, %v; want the upstream's own certificate, passed through", issuer, body, err)
	}
	rec = h.recs.wait(t, "passthrough", func(r audit.Record) bool { return r.TLS == audit.TLSPassthrough })
	if rec.Decision != audit.DecisionAllow || rec.Rule != policy.RuleUntrustedClient || rec.Reason != audit.ReasonUntrustedPassthrough || rec.Workload.PID != 31 {
		t.Errorf("passthrough record %+v", rec)
	}

	// As the attacker: the pass-through is for that workload and host only.
	if issuer, _, err := getAs(t, h, up, pinned, "other.test", sluiceRoots); err != nil || issuer != h.ca.Certificate().Subject.CommonName {
		t.Errorf("the same workload to another host: issuer %q, %v; want decrypted", issuer, err)
	}
	if issuer, _, err := getAs(t, h, up, other, "api.test", sluiceRoots); err != nil || issuer != h.ca.Certificate().Subject.CommonName {
		t.Errorf("another workload to the host: issuer %q, %v; want decrypted", issuer, err)
	}
	sameCgroupOtherExe := pinned
	sameCgroupOtherExe.Exe = "/usr/bin/python3"
	if issuer, _, err := getAs(t, h, up, sameCgroupOtherExe, "api.test", sluiceRoots); err != nil || issuer != h.ca.Certificate().Subject.CommonName {
		t.Errorf("another program of the workload to the host: issuer %q, %v; want decrypted", issuer, err)
	}
}

// Without the option (intercept, the default) the next connection is
// decrypted again, and fails again.
func TestClientUntrustedInterceptKeepsDecrypting(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, untrustedPolicy(t, "intercept"))
	id := workload.Identity{PID: 41, Comm: "pinned", Cgroup: "/test.slice/p.scope"}
	upstreamOnly := x509.NewCertPool()
	upstreamOnly.AppendCertsFromPEM(tca.pem)
	for i := range 2 {
		if _, _, err := getAs(t, h, up, id, "api.test", upstreamOnly); err == nil {
			t.Fatalf("connection %d: Sluice's leaf accepted", i)
		}
	}
	n := 0
	deadline := time.Now().Add(5 * time.Second)
	for n < 2 && time.Now().Before(deadline) {
		n = 0
		for _, r := range h.recs.all() {
			if r.Decision == audit.DecisionClientUntrusted {
				n++
			}
			if r.TLS == audit.TLSPassthrough {
				t.Fatalf("passed through without the option: %+v", r)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n != 2 {
		t.Errorf("%d client_untrusted records, want 2", n)
	}
}

// A client that completes the handshake (it trusts the CA) and closes at
// once without a request is one that pins: client_untrusted too. One that
// sends its request is not.
func TestClientClosingAfterHandshakeIsUntrusted(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, untrustedPolicy(t, "intercept"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.BundlePEM())
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 51, Comm: "okhttp"})
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	rec := h.recs.wait(t, "client_untrusted", func(r audit.Record) bool { return r.Decision == audit.DecisionClientUntrusted })
	if rec.Workload.PID != 51 || rec.Host != "api.test" || !strings.Contains(rec.Error, "right after the TLS handshake") {
		t.Errorf("record %+v", rec)
	}
}

func TestRejectedCertificate(t *testing.T) {
	remote := func(text string) error {
		return &net.OpError{Op: "remote error", Err: errors.New(text)}
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{remote("tls: unknown certificate authority"), true},
		{remote("tls: bad certificate"), true},
		{remote("tls: unknown certificate"), true},
		{fmt.Errorf("handshake: %w", remote("tls: unknown certificate authority")), true},
		{remote("tls: protocol version not supported"), false},
		{&net.OpError{Op: "read", Err: errors.New("tls: bad certificate")}, false},
		{io.EOF, false},
		{tls.AlertError(48), true},
		{tls.AlertError(70), false},
	} {
		if got := rejectedCertificate(tc.err); got != tc.want {
			t.Errorf("rejectedCertificate(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// The memory is bounded and forgets.
func TestUntrustedSetBoundedAndExpires(t *testing.T) {
	s := newUntrustedSet(2, 50*time.Millisecond)
	a := &workload.Identity{Cgroup: "/a"}
	s.add(a, "one.test", 443)
	s.add(a, "two.test", 443)
	s.add(a, "three.test", 443)
	if s.has(a, "one.test", 443) || !s.has(a, "three.test", 443) {
		t.Errorf("past the bound: one %v three %v", s.has(a, "one.test", 443), s.has(a, "three.test", 443))
	}
	if !s.has(a, "THREE.test.", 443) || s.has(a, "three.test", 8443) || s.has(&workload.Identity{Cgroup: "/b"}, "three.test", 443) {
		t.Error("the key is the workload, the host (any case) and the port")
	}
	time.Sleep(120 * time.Millisecond)
	if s.has(a, "three.test", 443) {
		t.Error("an entry outlived its TTL")
	}
	s.add(a, "", 443)
	if s.has(a, "", 443) {
		t.Error("an empty host was remembered")
	}
}

// OpenSSL's plaintext alert in a TLS 1.3 handshake is read from the
// records, whichever way the reads split them.
func TestAlertWatch(t *testing.T) {
	hello := append([]byte{22, 3, 1, 0, 3}, 1, 2, 3)
	alert := []byte{21, 3, 3, 0, 2, 2, 48}
	appData := []byte{23, 3, 3, 0, 2, 21, 48} // an encrypted record whose body looks like an alert
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string
		ok     bool
	}{
		{"hello then unknown_ca", append(append([]byte{}, hello...), alert...), "unknown_ca", true},
		{"hello only", hello, "", false},
		{"application data is not an alert", append(append([]byte{}, hello...), appData...), "", false},
		{"another alert", append(append([]byte{}, hello...), 21, 3, 3, 0, 2, 2, 70), "", false},
		{"a long alert record is encrypted", append(append([]byte{}, hello...), 21, 3, 3, 0, 3, 2, 48, 0), "", false},
	} {
		for split := 1; split <= len(tc.stream); split++ {
			w := &alertWatch{}
			for b := tc.stream; len(b) > 0; {
				k := min(split, len(b))
				w.scan(b[:k])
				b = b[k:]
			}
			if got, ok := w.rejected(); got != tc.want || ok != tc.ok {
				t.Errorf("%s, reads of %d: %q %v, want %q %v", tc.name, split, got, ok, tc.want, tc.ok)
			}
		}
	}
}

func FuzzAlertWatch(f *testing.F) {
	f.Add([]byte{22, 3, 1, 0, 1, 9, 21, 3, 3, 0, 2, 2, 48}, 3)
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		if split <= 0 {
			split = 1
		}
		w := &alertWatch{}
		for len(b) > 0 {
			k := min(split, len(b))
			w.scan(b[:k])
			b = b[k:]
		}
		w.rejected()
	})
}

// A client that hangs up once it has the certificate, with no alert (as
// Java's HttpClient does), is client_untrusted too.
func TestClientHangingUpAfterCertificateIsUntrusted(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, untrustedPolicy(t, "intercept"))
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 61, Comm: "java"})
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", InsecureSkipVerify: true,
		VerifyConnection: func(tls.ConnectionState) error {
			c.Close() // no alert can follow
			return errors.New("pinned certificate mismatch")
		}})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake succeeded")
	}
	rec := h.recs.wait(t, "client_untrusted", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.Decision != audit.DecisionClientUntrusted || rec.Workload.PID != 61 || !strings.Contains(rec.Error, "without an alert") {
		t.Errorf("record %+v", rec)
	}
}

// A client that hangs up in a resumed handshake (no certificate was sent:
// it accepted the leaf on the connection it got its ticket from) is not
// client_untrusted: the record is a client handshake error, and with
// tls.onUntrustedClient passthrough its next connection to that host is
// still decrypted. wrk killed at the end of a run does this.
func TestClientHangingUpInResumedHandshakeIsNotUntrusted(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, untrustedPolicy(t, "passthrough"))
	id := workload.Identity{PID: 62, Comm: "wrk", Cgroup: "/bench.scope"}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.BundlePEM())
	cache := tls.NewLRUClientSessionCache(4)
	cfg := func() *tls.Config {
		return &tls.Config{ServerName: "api.test", RootCAs: roots, ClientSessionCache: cache, NextProtos: []string{"http/1.1"}}
	}
	get := func() string {
		c := transparent(t, h, Destination{Addr: up.addr}, id)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(c, cfg())
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer tc.Close()
		fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		if _, err := io.ReadAll(tc); err != nil {
			t.Fatalf("read: %v", err)
		}
		return tc.ConnectionState().PeerCertificates[0].Issuer.CommonName
	}
	sluiceCA := h.ca.Certificate().Subject.CommonName
	if got := get(); got != sluiceCA { // a session ticket for the next ones
		t.Fatalf("first connection: issuer %q, want Sluice's %q", got, sluiceCA)
	}

	c := transparent(t, h, Destination{Addr: up.addr}, id)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resumed := false
	hang := cfg()
	hang.VerifyConnection = func(cs tls.ConnectionState) error {
		resumed = cs.DidResume
		c.Close() // gone before its Finished: no alert can follow
		return errors.New("killed")
	}
	if err := tls.Client(c, hang).Handshake(); err == nil {
		t.Fatal("handshake succeeded")
	}
	if !resumed {
		t.Fatal("the second handshake did not resume: the test proves nothing")
	}
	rec := h.recs.wait(t, "the record of the hang-up", func(r audit.Record) bool {
		return r.Kind == audit.KindL4 && r.Workload.PID == 62
	})
	if rec.Decision != audit.DecisionError || rec.Reason != audit.ReasonClientHandshake {
		t.Errorf("record %+v, want decision %q reason %q", rec, audit.DecisionError, audit.ReasonClientHandshake)
	}
	if got := get(); got != sluiceCA {
		t.Errorf("after the hang-up: issuer %q, want Sluice's %q (still decrypted, not passed through)", got, sluiceCA)
	}
}

// A client that closes right after the handshake when the upstream could
// not be reached is not taken for one that rejected the certificate: the
// record says the upstream was unreachable, and the workload's later
// connections to that host are not passed through for it.
func TestClientClosingAfterHandshakeToDeadUpstream(t *testing.T) {
	h := newHarness(t, nil, untrustedPolicy(t, "passthrough"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.BundlePEM())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens there now
	id := workload.Identity{PID: 52, Comm: "probe", Cgroup: "/test.slice/probe.scope"}
	c := transparent(t, h, Destination{Addr: dead}, id)
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	rec := h.recs.wait(t, "the connection's record", func(r audit.Record) bool { return r.Kind == audit.KindL4 && r.Workload.PID == 52 })
	if rec.Decision != audit.DecisionError || rec.Reason != audit.ReasonUpstreamUnreachable || !strings.Contains(rec.Error, "without a request") {
		t.Errorf("record %+v, want the upstream unreachable", rec)
	}
	if h.p.untrusted.has(&id, "api.test", dead.Port()) {
		t.Error("the workload is remembered as rejecting the certificate of api.test")
	}
}
