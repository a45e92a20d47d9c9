package mitm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// An Exchange is reused only when nothing can reach it after its
// request: each state below keeps a reference that may outlive the
// handler (another goroutine, a held record, a stage's later work).
func TestExchangeReusable(t *testing.T) {
	sent := func() *Exchange {
		x := &Exchange{finished: true}
		x.h1req.r = &http.Request{}
		return x
	}
	for _, tc := range []struct {
		name string
		set  func(x *Exchange)
		want bool
	}{
		{"sent on the handler's goroutine, no body, record emitted", func(*Exchange) {}, true},
		{"finish did not run: the record is still to come", func(x *Exchange) { x.finished = false }, false},
		{"sent through the pool's Transport", func(x *Exchange) { x.h1req.r = nil }, false},
		{"sent to an HTTP/2 pool, no body", func(x *Exchange) { x.h1req.r, x.stop.ch = nil, make(chan struct{}) }, true},
		{"sent to an HTTP/2 pool with a body", func(x *Exchange) {
			x.h1req.r, x.stop.ch, x.body = nil, make(chan struct{}), &countingBody{}
		}, false},
		{"a request body", func(x *Exchange) { x.body = &countingBody{} }, false},
		{"a body wrapper", func(x *Exchange) { x.WrapBody(func(rc io.ReadCloser) io.ReadCloser { return rc }) }, false},
		{"an OnFinish hook", func(x *Exchange) { x.OnFinish(func() {}) }, false},
		{"content findings", func(x *Exchange) { x.found = &findings{} }, false},
		{"an MCP request", func(x *Exchange) { x.mcp = &mcpRequest{} }, false},
		{"a cache lookup", func(x *Exchange) { x.cache = &cacheLookup{} }, false},
		{"an upstream group's choice", func(x *Exchange) { x.bal = &balanced{} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := sent()
			tc.set(x)
			if got := x.reusable(); got != tc.want {
				t.Fatalf("reusable = %v, want %v", got, tc.want)
			}
		})
	}
}

// A request served with a reused Exchange records nothing of the one
// before: here the record before ends with the client's leaving
// mid-response (End), which a request that completes never sets, and
// the next request's record, made from the same Exchange, must not say
// so.
func TestRecycledExchangeCarriesNothingOver(t *testing.T) {
	// One P: the pool hands the next request the Exchange the last one
	// put back.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, longOrFine())
	h := newHarness(t, tca, nil)
	for i := range 3 {
		long := fmt.Sprintf("/long/%d", i)
		// Both tunnels first: a CONNECT is a request too, served with an
		// Exchange from the pool (and answered, never recycled).
		c := connectTLS(t, h, "api.test", up.addr.Port())
		c2 := connectTLS(t, h, "api.test", up.addr.Port())
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.test\r\n\r\n", long); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		left := h.recs.wait(t, "the long response", func(r audit.Record) bool { return r.Path == long })
		if left.End != audit.EndClientClosed {
			t.Fatalf("%s: record end %q error %q, want %q", long, left.End, left.Error, audit.EndClientClosed)
		}
		path := fmt.Sprintf("/next-%d", i)
		resp, body := rawRequest(t, c2, "GET "+path+" HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		c2.Close()
		if resp.StatusCode != 200 || body != "fine "+path {
			t.Fatalf("next request: status %d body %q", resp.StatusCode, body)
		}
		next := h.recs.wait(t, "the next request", func(r audit.Record) bool { return r.Path == path })
		if next.End != "" || next.Error != "" || next.Decision != audit.DecisionAllow || next.BytesOut != int64(len(body)) {
			t.Fatalf("next request's record: end %q error %q decision %q bytes out %d, want no end, no error, allow, %d bytes", next.End, next.Error, next.Decision, next.BytesOut, len(body))
		}
	}
}

// The same over HTTP/2 at both ends, where the upstream's stream is
// given the Exchange's own request (x.out): a client that resets its
// stream mid-response leaves an Exchange that the next request reuses,
// and that request's answer and record are its own. Each round sends
// the next request while the reset one's upstream stream may still be
// winding down on the same connection.
func TestRecycledExchangeCarriesNothingOverH2(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, longOrFine())
	h := newHarness(t, tca, nil)
	client := h.client(true)
	base := fmt.Sprintf("https://api.test:%d", up.addr.Port())
	for i := range 3 {
		long := fmt.Sprintf("/long/%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+long, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s: the client spoke %s to the proxy, want HTTP/2", long, resp.Proto)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		cancel() // the client resets its stream
		resp.Body.Close()
		left := h.recs.wait(t, "the long response", func(r audit.Record) bool { return r.Path == long })
		if left.End != audit.EndClientClosed || left.Proto != "HTTP/2.0" {
			t.Fatalf("%s: record end %q proto %q error %q, want %q over HTTP/2", long, left.End, left.Proto, left.Error, audit.EndClientClosed)
		}
		for j := range 3 {
			path := fmt.Sprintf("/next-%d-%d", i, j)
			resp, err := client.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || body != "fine "+path || resp.Header.Get("X-Path") != path {
				t.Fatalf("%s: status %d body %q X-Path %q", path, resp.StatusCode, body, resp.Header.Get("X-Path"))
			}
			next := h.recs.wait(t, "the next request", func(r audit.Record) bool { return r.Path == path })
			if next.End != "" || next.Error != "" || next.Decision != audit.DecisionAllow || next.BytesOut != int64(len(body)) || next.Status != 200 {
				t.Fatalf("%s record: end %q error %q decision %q status %d bytes out %d, want no end, no error, allow, 200, %d bytes",
					path, next.End, next.Error, next.Decision, next.Status, next.BytesOut, len(body))
			}
		}
	}
}

// longOrFine is the upstream of the recycling tests: /long/... answers
// far more than the sockets hold, slowly, so that a client can leave
// mid-response and the proxy's writes to it fail; any other path
// answers "fine PATH" at once, with X-Path: PATH.
func longOrFine() http.Handler {
	chunk := strings.Repeat("x", 16<<10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/long/") {
			w.Header().Set("X-Path", r.URL.Path)
			_, _ = io.WriteString(w, "fine "+r.URL.Path)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(200*len(chunk)))
		for range 200 {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
	})
}
