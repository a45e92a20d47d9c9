package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// A request the policy let through in audit mode ("would deny" by the
// SSRF guard, as the default policy does for loopback) that then fails
// inside Sluice must not blame the rule: the client's body and the record
// name no rule, decision "error" says what failed, and the record keeps
// the policy's decision beside it.
func TestFailureInsideSluiceNamesNoRule(t *testing.T) {
	dec := &fakeDecider{req: func(*policy.Request) policy.Decision {
		return policy.Decision{WouldDeny: true, Rule: policy.RuleSSRF, Reason: audit.ReasonLoopback}
	}}
	h := newHarness(t, nil, dec)
	// A port nobody listens on: the upstream is unreachable.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cl := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(h.url)}}
	resp, err := cl.Get(fmt.Sprintf("http://api.test:%d/gone", port))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || strings.Contains(body, "ssrf") || !strings.Contains(body, "unreachable") {
		t.Errorf("client got %d %s; want 502 naming the failure and no rule", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "502", func(r audit.Record) bool { return r.Path == "/gone" })
	if rec.Decision != audit.DecisionError || rec.Rule != "" || rec.Reason != audit.ReasonUpstreamUnreachable {
		t.Errorf("record decision %q rule %q reason %q; want error, no rule, %q", rec.Decision, rec.Rule, rec.Reason, audit.ReasonUpstreamUnreachable)
	}
	if rec.PolicyDecision != audit.DecisionWouldDeny || rec.PolicyRule != policy.RuleSSRF || rec.PolicyReason != audit.ReasonLoopback {
		t.Errorf("record policy decision %q rule %q reason %q; want the policy's would_deny by ssrf", rec.PolicyDecision, rec.PolicyRule, rec.PolicyReason)
	}
}

// A client that opens a connection and closes it unused (a spare
// keep-alive connection) leaves an L4 record of a normal end, not an
// error.
func TestUnusedConnectionIsANormalEnd(t *testing.T) {
	h := newHarness(t, nil, nil)
	client, server := net.Pipe()
	client.Close()
	h.p.Handle(context.Background(), server, Destination{}, workload.Identity{Comm: "spare"})
	rec := h.recs.wait(t, "the spare connection", func(r audit.Record) bool { return r.Workload.Comm == "spare" })
	if rec.Kind != audit.KindL4 || rec.Decision != audit.DecisionClosed || rec.End != audit.EndClientClosed || rec.Error != "" {
		t.Errorf("record %+v; want an l4 record, decision closed, ended by the client, no error", rec)
	}
}

// The upstream's Trailer header reaches the client with the response
// head, so the client knows which trailers to expect before the body.
func TestTrailerHeaderKept(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				w.WriteHeader(200)
				io.WriteString(w, "body")
				w.Header().Set("X-Checksum", "abc123")
			}))
			h := newHarness(t, tca, nil)
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/t", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if _, announced := resp.Trailer["X-Checksum"]; !announced {
				t.Fatalf("before the body, trailers announced %v; want X-Checksum from the Trailer header", resp.Trailer)
			}
			if b := readAll(t, resp.Body); b != "body" || resp.Trailer.Get("X-Checksum") != "abc123" {
				t.Fatalf("body %q trailers %v", b, resp.Trailer)
			}
		})
	}
}

// grpcThroughProxy serves the gRPC health service upstream (TLS, api.test)
// and returns a real gRPC client connected through the explicit proxy.
func grpcThroughProxy(t *testing.T) (*harness, healthpb.HealthClient) {
	t.Helper()
	tca := newTestCA(t, "upstream test CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}})))
	hs := health.NewServer()
	hs.SetServingStatus("sluice.test.Svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	h := newHarness(t, tca, nil)
	connect := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", h.url.Host)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			c.Close()
			return nil, fmt.Errorf("CONNECT %s: %v %v", addr, resp, err)
		}
		return c, nil
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.BundlePEM())
	cc, err := grpc.NewClient(fmt.Sprintf("passthrough:///api.test:%d", ln.Addr().(*net.TCPAddr).Port),
		grpc.WithContextDialer(connect),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "api.test"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return h, healthpb.NewHealthClient(cc)
}

// A failed gRPC call is an HTTP 200: its grpc-status and grpc-message go
// into the record so it does not look like a success.
func TestGRPCStatusRecorded(t *testing.T) {
	h, hc := grpcThroughProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "sluice.test.Svc"}); err != nil {
		t.Fatalf("check a served service: %v", err)
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Svc"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("check an unknown service: %v, want NotFound", err)
	}
	ok := h.recs.wait(t, "the good call", func(r audit.Record) bool { return r.GRPCStatus == "0" })
	bad := h.recs.wait(t, "the failed call", func(r audit.Record) bool { return r.GRPCStatus == "5" })
	if ok.Status != 200 || bad.Status != 200 || bad.GRPCMessage != "unknown service" || bad.Path != "/grpc.health.v1.Health/Check" {
		t.Errorf("records %+v\n%+v", ok, bad)
	}
}

// A client that cancels a gRPC stream ends it normally.
func TestGRPCStreamCancelIsANormalEnd(t *testing.T) {
	h, hc := grpcThroughProxy(t)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "sluice.test.Svc"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first update %v %v", m, err)
	}
	cancel()
	rec := h.recs.wait(t, "the cancelled stream", func(r audit.Record) bool { return r.Path == "/grpc.health.v1.Health/Watch" })
	if rec.Decision != audit.DecisionAllow || rec.Error != "" || rec.End != audit.EndClientClosed {
		t.Errorf("record %+v; want allow, no error, ended by the client", rec)
	}
}

// Connections that end before a request leave a record: one that says
// nothing after its handshake ends normally, one that starts a request
// head and stalls (slowloris) is an error the client caused.
func TestConnectionWithoutRequestIsRecorded(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.HandshakeTimeout = config.Duration(300 * time.Millisecond) })
	for _, tc := range []struct {
		name, send, decision, reason string
	}{
		{"silent after the handshake", "", audit.DecisionClosed, audit.ReasonNoRequest},
		{"a head begun and never finished", "GET /slow HTTP/1.1\r\nHost: api.test\r\nX-Slow: 1", audit.DecisionError, audit.ReasonIncompleteHead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", up.addr.Port())
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(h.ca.BundlePEM())
			tc2 := tls.Client(newBufferedConn(c, br), &tls.Config{ServerName: "api.test", RootCAs: roots, NextProtos: []string{"http/1.1"}})
			if err := tc2.Handshake(); err != nil {
				t.Fatal(err)
			}
			io.WriteString(tc2, tc.send)
			// The proxy gives up on the head after HandshakeTimeout.
			_ = tc2.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, tc2)
			rec := h.recs.wait(t, tc.name, func(r audit.Record) bool { return r.Kind == audit.KindL4 && r.Reason == tc.reason })
			if rec.Decision != tc.decision || rec.TLS != audit.TLSDecrypted || rec.SNI != "api.test" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// A server that speaks first (an SSH, SMTP or MySQL banner) is heard at
// once on a port that is not HTTP's: the proxy connects upstream while it
// waits for the client, instead of waiting PeekTimeout for a client that
// is itself waiting for the banner.
func TestServerSpeaksFirstWithoutDelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo "+line)
	}()
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.PeekTimeout = config.Duration(time.Minute) })
	c := transparent(t, h, Destination{Addr: netip.MustParseAddrPort(ln.Addr().String())}, workload.Identity{PID: 22})
	defer c.Close()
	// Far below PeekTimeout: the banner must not wait for it.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if banner, err := br.ReadString('\n'); err != nil || banner != "SSH-2.0-OpenSSH_9.6\r\n" {
		t.Fatalf("banner %q %v", banner, err)
	}
	io.WriteString(c, "SSH-2.0-client\r\n")
	if echo, err := br.ReadString('\n'); err != nil || echo != "echo SSH-2.0-client\r\n" {
		t.Fatalf("echo %q %v", echo, err)
	}
	c.Close()
	rec := h.recs.wait(t, "the relayed flow", func(r audit.Record) bool { return r.Workload.PID == 22 })
	if rec.Kind != audit.KindL4 || rec.Decision != audit.DecisionAllow || rec.BytesIn == 0 || rec.BytesOut == 0 || rec.TLS != audit.TLSNone {
		t.Errorf("record %+v", rec)
	}
}

// One workload can't take every slot: past proxy.maxConnectionsPerWorkload
// its connections are refused and recorded, while another workload is
// still served.
func TestConnectionsPerWorkload(t *testing.T) {
	up := startPlainUpstream(t, echoHandler())
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.MaxConnectionsPerWorkload = 3 })
	greedy := workload.Identity{Cgroup: "/greedy.scope"}
	for i := 0; i < 3; i++ {
		transparent(t, h, Destination{Addr: up.addr}, greedy) // idle: holds a slot
	}
	// Handle runs on its own goroutine; wait until the three hold theirs.
	deadline := time.Now().Add(5 * time.Second)
	for h.p.slots.inUse("/greedy.scope") < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	c := transparent(t, h, Destination{Addr: up.addr}, greedy)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the fourth connection of one workload read %d bytes; want it closed", n)
	}
	rec := h.recs.wait(t, "the refusal", func(r audit.Record) bool { return r.Reason == audit.ReasonTooManyConns })
	if rec.Workload.Cgroup != "/greedy.scope" || !strings.Contains(rec.Error, "maxConnectionsPerWorkload (3)") {
		t.Errorf("record %+v", rec)
	}
	other := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{Cgroup: "/other.scope"})
	resp, body := rawRequest(t, other, "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 || !strings.Contains(body, "hello GET /x") {
		t.Fatalf("another workload got %d %q", resp.StatusCode, body)
	}
}

// A fault of Sluice's own (here a policy that panics) still leaves a
// record: an exchange ended by a panic is recorded as an internal error
// with the panic's value, and the client's connection is cut, not
// answered as if the policy had decided.
func TestPanicInRequestDecisionRecorded(t *testing.T) {
	dec := &fakeDecider{req: func(*policy.Request) policy.Decision { panic("decider broke") }}
	h := newHarness(t, nil, dec)
	up := startPlainUpstream(t, echoHandler())
	cl := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(h.url)}}
	resp, err := cl.Get(fmt.Sprintf("http://api.test:%d/boom", up.addr.Port()))
	if err == nil {
		body := readAll(t, resp.Body)
		resp.Body.Close()
		t.Errorf("client got %d %q; want the connection cut", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "the panicked exchange", func(r audit.Record) bool { return r.Path == "/boom" })
	if rec.Decision != audit.DecisionError || rec.Reason != audit.ReasonInternal || rec.Error != "panic: decider broke" {
		t.Errorf("record decision %q reason %q error %q; want error, %q, the panic", rec.Decision, rec.Reason, rec.Error, audit.ReasonInternal)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(h.recs.all()); n != 1 {
		t.Errorf("%d records, want 1: %+v", n, h.recs.all())
	}
}

// The same before any request: a TLS connection whose decision (at its
// ClientHello) panicked is recorded (kind l4) as an internal error. (A
// plain-HTTP connection is decided per request, so the request's record
// says it.)
func TestPanicInConnectionDecisionRecorded(t *testing.T) {
	dec := &fakeDecider{conn: func(*policy.Conn) policy.ConnDecision { panic("decider broke") }}
	h := newHarness(t, nil, dec)
	client, server := net.Pipe()
	defer client.Close()
	go tls.Client(client, &tls.Config{ServerName: "api.test"}).Handshake()
	h.p.Handle(context.Background(), server, Destination{Addr: netip.MustParseAddrPort("127.0.0.1:443")}, workload.Identity{Comm: "panicky"})
	rec := h.recs.wait(t, "the panicked connection", func(r audit.Record) bool { return r.Workload.Comm == "panicky" })
	if rec.Kind != audit.KindL4 || rec.Decision != audit.DecisionError || rec.Reason != audit.ReasonInternal || rec.Error != "panic: decider broke" {
		t.Errorf("record kind %q decision %q reason %q error %q; want l4, error, %q, the panic", rec.Kind, rec.Decision, rec.Reason, rec.Error, audit.ReasonInternal)
	}
}
