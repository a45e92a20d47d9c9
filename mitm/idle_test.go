package mitm

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// An idle CONNECT tunnel keeps nothing the explicit listener made for
// its connection: not the connection's h1Conn with its framer, nor the
// flow of the CONNECT (explicitListener.detach). They were about 1 KiB
// live per idle explicit connection, and the GC lets the heap grow to
// twice what is live, so 2 KiB of the proxy's resident memory each (the
// idle test of make bench-peers). Nor does an idle tunnel keep a
// goroutine.
func TestIdleExplicitTunnelKeepsNoListenerConn(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(t, tca, nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	cfg := &tls.Config{RootCAs: pool, ServerName: "api.test", NextProtos: []string{"http/1.1"}}
	open := func() net.Conn {
		raw, err := idleDialConnect(h.url.Host, up.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		return idleGet(t, tls.Client(raw, cfg))
	}
	open().Close() // warm up: the upstream connection, the parked set
	time.Sleep(h1ParkAfter + 200*time.Millisecond)

	// Every allocation from here on is in the heap profile, with its
	// stack.
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	g0 := runtime.NumGoroutine()
	const n = 16
	conns := make([]net.Conn, 0, n)
	for range n {
		conns = append(conns, open())
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(h1ParkAfter + 500*time.Millisecond) // parked
	if g := runtime.NumGoroutine() - g0; g >= n/2 {
		t.Errorf("%d idle tunnels hold %d more goroutines, want none each", n, g)
	}
	runtime.GC()
	runtime.GC() // the profile is as of the last completed cycle
	// Only the key of the connection's slot stays, for its release.
	if live, _ := profileFrom(t, "mitm.(*explicitListener).wrap", "mitm.slotKey"); live >= n {
		t.Errorf("%d idle tunnels keep %d objects the explicit listener's wrap allocated, want none", n, live)
	}
}

// profileFrom counts, in the heap profile, the objects in use and the
// bytes ever allocated whose allocation went through the function named
// fn and not through one named skip (none when "").
func profileFrom(t *testing.T, fn, skip string) (live, allocated int64) {
	t.Helper()
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	for _, r := range recs {
		frames := runtime.CallersFrames(r.Stack())
		for {
			fr, more := frames.Next()
			if skip != "" && strings.HasSuffix(fr.Function, skip) {
				break
			}
			if strings.HasSuffix(fr.Function, fn) {
				live += r.InUseObjects()
				allocated += r.AllocBytes
				break
			}
			if !more {
				break
			}
		}
	}
	return live, allocated
}

// An answer the server inside a CONNECT tunnel gives on its own (a
// malformed plain-HTTP request) is recorded once, by the tunnel's flow:
// the tunnel's bytes no longer pass through the explicit listener's
// h1Conn, which took that answer for one to the CONNECT and recorded it
// a second time (method CONNECT, the tunnel's target as path).
func TestIdleTunnelAnswerRecordedOnce(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(t, tca, nil)
	c, err := idleDialConnect(h.url.Host, up.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Fatalf("answer %q, want a 400", b)
	}
	h.recs.wait(t, "of the malformed request", func(r audit.Record) bool { return r.Status == http.StatusBadRequest })
	time.Sleep(200 * time.Millisecond) // a second record would follow at once
	var n int
	for _, r := range h.recs.all() {
		if r.Status == http.StatusBadRequest {
			n++
			if r.Method == http.MethodConnect {
				t.Errorf("the tunnel's answer recorded as the CONNECT's: %+v", r)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d records of the 400, want 1", n)
	}
}
