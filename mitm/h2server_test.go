package mitm

// Sluice's own HTTP/2 server (h2server.go) as its clients see it: x/net's
// client for what a well-behaved workload does, a raw Framer client for what
// a hostile one can do. Each test serves conns accepted on loopback, wrapped
// as exchange.go wraps them.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2SrvGet: the handler sees a GET as net/http shows one; the client
// gets the handler's head and body, with Date, a sniffed Content-Type and
// the Content-Length of a body written whole before the handler returned.
func TestH2SrvGet(t *testing.T) {
	seen := make(chan string, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		seen <- fmt.Sprintf("%s host=%s path=%s query=%s uri=%s %s/%d x-test=%s cookie=%q length=%d nobody=%v remote=%s",
			r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.RequestURI, r.Proto, r.ProtoMajor, r.Header.Get("X-Test"),
			r.Header.Get("Cookie"), r.ContentLength, r.Body == http.NoBody, r.RemoteAddr)
		w.Header().Set("X-Reply", "yes")
		io.WriteString(w, "<html>hello</html>")
	})
	var local string
	req := h2sReq(t, "GET", srv.url("/p/q?x=1&y=2"), nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { local = i.Conn.LocalAddr().String() },
	}))
	req.Host = "api.test"
	req.Header.Set("X-Test", "1")
	req.Header["Cookie"] = []string{"a=1", "b=2"} // sent as two cookie fields
	resp, body := h2sDo(t, h2sClient(t), req)
	want := `GET host=api.test path=/p/q query=x=1&y=2 uri=/p/q?x=1&y=2 HTTP/2.0/2 x-test=1 cookie="a=1; b=2" length=0 nobody=true remote=` + local
	if got := <-seen; got != want {
		t.Errorf("the handler saw\n%s\nwant\n%s", got, want)
	}
	if resp.StatusCode != 200 || body != "<html>hello</html>" || resp.Header.Get("X-Reply") != "yes" {
		t.Errorf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if ct, cl := resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"); ct != "text/html; charset=utf-8" || cl != "18" {
		t.Errorf("Content-Type %q, Content-Length %q; want text/html; charset=utf-8 and 18", ct, cl)
	}
	if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d) > time.Minute {
		t.Errorf("Date %q (%v), want now", resp.Header.Get("Date"), err)
	}
}

// TestH2SrvLargeBodies: an 8 MiB upload is echoed while it is being sent
// (the client sends past its first MiB only once echoed bytes arrive), and a
// 20 MiB download read slowly arrives whole: flow control loses nothing.
func TestH2SrvLargeBodies(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			io.CopyN(w, rand.NewChaCha8(h2sSeed), 20<<20)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil || r.ContentLength != -1 {
			t.Errorf("EnableFullDuplex: %v; ContentLength %d of a body of unknown length", err, r.ContentLength)
		}
		for buf := make([]byte, 32<<10); ; {
			n, err := r.Body.Read(buf)
			w.Write(buf[:n])
			if rc.Flush(); err != nil {
				return
			}
		}
	})
	tr := h2sClient(t)
	t.Run("echo", func(t *testing.T) {
		data := make([]byte, 8<<20)
		rand.NewChaCha8(h2sSeed).Read(data)
		pr, pw := io.Pipe()
		defer pr.Close()
		echoed := make(chan struct{})
		go func() {
			pw.Write(data[:1<<20])
			select {
			case <-echoed:
				pw.Write(data[1<<20:])
				pw.Close()
			case <-time.After(5 * time.Second):
				pw.CloseWithError(errors.New("nothing echoed 5s after the first MiB went up"))
			}
		}()
		resp, err := tr.RoundTrip(h2sReq(t, "POST", srv.url("/echo"), pr))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		first := make([]byte, 1)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatalf("first echoed byte: %v", err)
		}
		close(echoed)
		rest, err := io.ReadAll(resp.Body)
		if got := append(first, rest...); err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
			t.Errorf("echo: %d of %d bytes, same=%v, err %v", len(got), len(data), bytes.Equal(got, data), err)
		}
	})
	t.Run("slow download", func(t *testing.T) {
		resp, err := tr.RoundTrip(h2sReq(t, "GET", srv.url("/"), nil))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, want := sha256.New(), sha256.New()
		io.CopyN(want, rand.NewChaCha8(h2sSeed), 20<<20)
		for buf, n := make([]byte, 64<<10), 0; ; {
			k, err := resp.Body.Read(buf)
			if got.Write(buf[:k]); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			if n += k; n%(1<<20) < k {
				time.Sleep(10 * time.Millisecond) // slower than the server: its writes wait for the window
			}
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Error("the 20 MiB download arrived altered")
		}
	})
}

// TestH2SrvTrailers: request trailers are declared in r.Trailer at once and
// filled after the body's EOF; response trailers declared with the Trailer
// field or set under http.TrailerPrefix after the body reach resp.Trailer.
func TestH2SrvTrailers(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		before := fmt.Sprint(r.Trailer)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Declared")
		fmt.Fprintf(w, "before=%s after=%s", before, fmt.Sprint(r.Trailer))
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Late", "l")
	})
	req := h2sReq(t, "POST", srv.url("/"), strings.NewReader("body"))
	req.Trailer = http.Header{"X-Sum": {"abc"}}
	resp, body := h2sDo(t, h2sClient(t), req)
	if want := "before=map[X-Sum:[]] after=map[X-Sum:[abc]]"; body != want {
		t.Errorf("the handler saw %q, want %q", body, want)
	}
	if resp.Trailer.Get("X-Declared") != "d" || resp.Trailer.Get("X-Late") != "l" {
		t.Errorf("response trailers %v, want X-Declared: d and X-Late: l", resp.Trailer)
	}
}

// TestH2SrvConcurrentStreams: 200 requests run at once on one connection
// (each handler waits for all 200); with maxStreams 2, 20 concurrent
// requests of x/net's client, sent before it learns the limit, all succeed.
func TestH2SrvConcurrentStreams(t *testing.T) {
	t.Run("200 on one connection", func(t *testing.T) {
		var arrived atomic.Int32
		all := make(chan struct{})
		srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/warm" {
				return
			}
			if arrived.Add(1) == 200 {
				close(all)
			}
			select {
			case <-all:
				io.WriteString(w, "ok")
			case <-time.After(5 * time.Second):
				w.WriteHeader(http.StatusGatewayTimeout)
			}
		})
		tr := h2sClient(t)
		h2sDo(t, tr, h2sReq(t, "GET", srv.url("/warm"), nil)) // the client learns the server's SETTINGS
		if err := h2sGetAll(tr, srv.url("/"), 200); err != nil {
			t.Error(err)
		}
		if n := srv.accepted.Load(); n != 1 {
			t.Errorf("%d connections, want 1", n)
		}
	})
	t.Run("20 over maxStreams 2", func(t *testing.T) {
		srv := h2sStart(t, h2sConfig(10*time.Second, 2), func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(20 * time.Millisecond)
			io.WriteString(w, "ok")
		})
		if err := h2sGetAll(h2sClient(t), srv.url("/"), 20); err != nil {
			t.Error(err)
		}
	})
}

// TestH2SrvResponsesWithoutBody: HEAD, 204 and 304 carry no body (a 204
// handler's Write gets http.ErrBodyNotAllowed; a HEAD's gets the length
// of what it wrote, as from x/net's server); a handler that writes nothing
// answers 200 with Content-Length 0.
func TestH2SrvResponsesWithoutBody(t *testing.T) {
	writeErr := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
			_, err := w.Write([]byte("x"))
			writeErr <- err
		case "/304":
			w.WriteHeader(304)
		case "/nothing":
		default:
			io.WriteString(w, "a body HEAD must not carry")
		}
	})
	tr := h2sClient(t)
	for _, tc := range []struct {
		method, path string
		status       int
		length       string
	}{{"HEAD", "/", 200, "26"}, {"GET", "/204", 204, ""}, {"GET", "/304", 304, ""}, {"GET", "/nothing", 200, "0"}} {
		resp, body := h2sDo(t, tr, h2sReq(t, tc.method, srv.url(tc.path), nil))
		if resp.StatusCode != tc.status || body != "" || resp.Header.Get("Content-Length") != tc.length {
			t.Errorf("%s %s: %d, Content-Length %q, body %q; want %d, %q, no body",
				tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Length"), body, tc.status, tc.length)
		}
	}
	if err := <-writeErr; !errors.Is(err, http.ErrBodyNotAllowed) {
		t.Errorf("Write after WriteHeader(204): %v, want http.ErrBodyNotAllowed", err)
	}
}

// TestH2SrvInformational: a 1xx head goes out when the handler writes it:
// the client sees the 103 while the handler still waits for it to.
func TestH2SrvInformational(t *testing.T) {
	got103 := make(chan struct{})
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		select {
		case <-got103:
			io.WriteString(w, "final")
		case <-time.After(2 * time.Second):
			w.WriteHeader(http.StatusGatewayTimeout)
		}
	})
	var link string
	req := h2sReq(t, "GET", srv.url("/"), nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			link = h.Get("Link")
			close(got103)
			return nil
		},
	}))
	if resp, body := h2sDo(t, h2sClient(t), req); resp.StatusCode != 200 || body != "final" || link != "</a.css>; rel=preload" {
		t.Errorf("%d %q after a 1xx with Link %q; want the 103 first, then 200 final", resp.StatusCode, body, link)
	}
}

// TestH2SrvReadDeadline: a read deadline set through ResponseController
// ends a body read that waits on a silent client with
// os.ErrDeadlineExceeded, and the handler may still answer (as with x/net's
// server and net/http's HTTP/1).
func TestH2SrvReadDeadline(t *testing.T) {
	read := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if err == nil {
			_, err = r.Body.Read(make([]byte, 1))
		}
		read <- err
		w.WriteHeader(http.StatusRequestTimeout)
	})
	pr, pw := io.Pipe()
	defer pw.Close()
	resp, err := h2sClient(t).RoundTrip(h2sReq(t, "POST", srv.url("/"), pr))
	if err := <-read; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the handler's read: %v, want %v", err, os.ErrDeadlineExceeded)
	}
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("the client got %v, %v; want the handler's 408", resp, err)
	}
}

// TestH2SrvWriteDeadline: a handler's write that waits for a window the
// client never grants fails at the handler's write deadline, and the
// stream is reset (as x/net's server resets it); the connection keeps
// serving.
func TestH2SrvWriteDeadline(t *testing.T) {
	wrote := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			return // an empty 200: needs no window
		}
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := w.Write(make([]byte, 2*h2ShortResponse))
		wrote <- err
	})
	c := h2sConnect(t, srv.addr).handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}).start()
	c.headers(1, true, h2sHead(":path", "/big")...)
	if got := c.outcome(1); got != ":status 200" {
		t.Fatalf("the head: %s, want :status 200 (it needs no window)", got)
	}
	if got := c.outcome(1); got != "RST_STREAM INTERNAL_ERROR" {
		t.Errorf("after the write deadline: %s, want RST_STREAM INTERNAL_ERROR", got)
	}
	select {
	case err := <-wrote:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the handler's Write: %v, want %v", err, os.ErrDeadlineExceeded)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the handler's Write still waits 3 s after its deadline")
	}
	c.works()
}

// TestH2SrvContinue: a client that asks for 100 Continue gets it when the
// handler first reads the body, then the final answer; a handler that
// answers without reading sends no 100.
func TestH2SrvContinue(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/read" {
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
			return
		}
		w.WriteHeader(http.StatusExpectationFailed)
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, false, h2sHead(":method", "POST", ":path", "/read", "expect", "100-continue")...)
	if got := c.outcome(1); got != ":status 100" {
		t.Fatalf("before the body: %s, want :status 100", got)
	}
	c.WriteData(1, true, []byte("body"))
	if got := c.outcome(1); got != ":status 200" {
		t.Errorf("after the body: %s, want :status 200", got)
	}
	c.headers(3, false, h2sHead(":method", "POST", ":path", "/refuse", "expect", "100-continue")...)
	if got := c.outcome(3); got != ":status 417" {
		t.Errorf("a handler that reads nothing: %s, want :status 417 and no 100", got)
	}
}

// TestH2SrvClientCancel: a client that cancels its request (RST_STREAM),
// or whose connection ends, ends the handler's r.Context() within a second.
func TestH2SrvClientCancel(t *testing.T) {
	started, ended := make(chan struct{}, 1), make(chan struct{}, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- struct{}{}
		case <-time.After(5 * time.Second):
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.url("/"), nil)
	go h2sClient(t).RoundTrip(req)
	h2sWait(t, started, "start of the handler")
	cancel()
	h2sWait(t, ended, "end of the handler's r.Context() after the client canceled")
	c := h2sConnect(t, srv.addr).handshake()
	c.headers(1, true, h2sHead()...)
	h2sWait(t, started, "start of the handler")
	c.nc.Close()
	h2sWait(t, ended, "end of the handler's r.Context() after the client's connection closed")
}

// TestH2SrvHandlerPanic: a handler that panics mid-body, with a value or
// http.ErrAbortHandler, resets its stream: the client's body read fails, it
// does not end as a short success. The connection keeps serving.
func TestH2SrvHandlerPanic(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		if r.URL.Path == "/" {
			return
		}
		http.NewResponseController(w).Flush()
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler)
		}
		panic("boom")
	})
	tr := h2sClient(t)
	for _, path := range []string{"/panic", "/abort"} {
		resp, err := tr.RoundTrip(h2sReq(t, "GET", srv.url(path), nil))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if body, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("%s: body %q ended cleanly, want a read error", path, body)
		}
		resp.Body.Close()
	}
	if _, body := h2sDo(t, tr, h2sReq(t, "GET", srv.url("/"), nil)); body != "partial" {
		t.Errorf("after the panics: %q", body)
	}
}

// TestH2SrvIdleTimeout: a connection with no open stream for idleTimeout
// (200ms) gets GOAWAY and is closed, but not while a 600ms request runs.
func TestH2SrvIdleTimeout(t *testing.T) {
	srv := h2sStart(t, h2sConfig(200*time.Millisecond, 250), func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(600 * time.Millisecond)
		io.WriteString(w, "done")
	})
	cc := h2sClientConn(t, srv)
	if _, body := h2sDo(t, cc, h2sReq(t, "GET", srv.url("/"), nil)); body != "done" {
		t.Fatalf("a 600ms request: %q", body)
	}
	last := time.Now()
	h2sUntil(t, "GOAWAY or close of the idle connection", 2*time.Second, func() bool { s := cc.State(); return s.Closing || s.Closed })
	if d := time.Since(last); d < 100*time.Millisecond {
		t.Errorf("closed %v after the last request, idleTimeout is 200ms", d)
	}
}

// TestH2SrvShutdown: when serveConn's ctx ends while a request runs, the
// client gets GOAWAY, the request still completes, then the connection closes.
func TestH2SrvShutdown(t *testing.T) {
	started := make(chan struct{})
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "done")
	})
	cc := h2sClientConn(t, srv)
	got := make(chan string, 1)
	go func() {
		resp, err := cc.RoundTrip(h2sReq(t, "GET", srv.url("/"), nil))
		if err != nil {
			got <- err.Error()
			return
		}
		body, err := io.ReadAll(resp.Body)
		got <- fmt.Sprint(string(body), err)
	}()
	h2sWait(t, started, "start of the handler")
	srv.cancel()
	h2sUntil(t, "GOAWAY", time.Second, func() bool { return cc.State().Closing })
	select {
	case body := <-got:
		if body != "done<nil>" {
			t.Errorf("the request running at shutdown got %q, want done", body)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no response 3s after shutdown")
	}
	h2sUntil(t, "return of serveConn", 2*time.Second, func() bool { return srv.ended.Load() == 1 })
}

// TestH2SrvStalledClient: a client that opens its windows and then never
// reads while a large body is written is dropped within idleTimeout (the
// write stall limit): the handler's Write fails, serveConn returns and no
// goroutine is left behind.
func TestH2SrvStalledClient(t *testing.T) {
	wrote := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(300*time.Millisecond, 250), func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for n := 0; n < 1<<30; n += len(buf) {
			if _, err := w.Write(buf); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	})
	base := runtime.NumGoroutine()
	c := h2sConnect(t, srv.addr).stall()
	c.headers(1, true, h2sHead()...) // and reads nothing more
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("1 GiB written to a client that reads nothing")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the handler's Write still blocked 3s after the client stopped reading (idleTimeout 300ms)")
	}
	h2sUntil(t, "return of serveConn", 2*time.Second, func() bool { return srv.ended.Load() == 1 })
	h2sUntil(t, "goroutine count back to where it was", 2*time.Second, func() bool { return runtime.NumGoroutine() <= base })
}

// TestH2SrvStalledClientFlood: a client that reads nothing while a
// handler's write waits on it, and meanwhile sends 20,000 heads the server
// must refuse, costs the server a bounded number of goroutines until the
// stall ends the connection (x/net's server queues at most 10,000 control
// frames, then says GOAWAY ENHANCE_YOUR_CALM).
func TestH2SrvStalledClientFlood(t *testing.T) {
	srv := h2sStart(t, h2sConfig(3*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		for buf := make([]byte, 64<<10); ; {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})
	base := runtime.NumGoroutine()
	c := h2sConnect(t, srv.addr).stall()
	c.headers(1, true, h2sHead()...)
	time.Sleep(200 * time.Millisecond) // the handler's writes fill the socket buffers and wait
	for id := uint32(3); id < 40000; id += 2 {
		c.headers(id, true, h2sHead("connection", "x")...) // malformed: each gets RST_STREAM
	}
	time.Sleep(100 * time.Millisecond)
	if n := runtime.NumGoroutine() - base; n > 1000 {
		t.Errorf("%d goroutines more than before, while the client stalls (idleTimeout 3s)", n)
	}
}

// TestH2SrvRapidReset: 10,000 requests each reset at once (CVE-2023-44487),
// whose handlers take a while to end, run at most maxStreams handlers and a
// bounded number of goroutines at once; the connection keeps serving or
// ends with GOAWAY ENHANCE_YOUR_CALM, and every handler returns.
func TestH2SrvRapidReset(t *testing.T) {
	const maxStreams = 100
	var running, peak atomic.Int64
	srv := h2sStart(t, h2sConfig(10*time.Second, maxStreams), func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if h2sBlockOrOK(w, r); r.URL.Path == "/block" {
			time.Sleep(10 * time.Millisecond) // winding down
		}
	})
	base, peakG := runtime.NumGoroutine(), 0
	c := h2sConnect(t, srv.addr).handshake().start()
	for id := uint32(1); id < 20000; id += 2 {
		c.headers(id, true, h2sHead(":path", "/block")...)
		c.WriteRSTStream(id, http2.ErrCodeCancel)
		if id%64 == 1 {
			peakG = max(peakG, runtime.NumGoroutine()-base)
		}
	}
	id := c.last + 2
	c.headers(id, true, h2sHead()...)
	if got := c.outcome(id); got != ":status 200" && got != "GOAWAY ENHANCE_YOUR_CALM" {
		t.Errorf("after the flood: %s, want :status 200 or GOAWAY ENHANCE_YOUR_CALM", got)
	}
	h2sUntil(t, "return of every handler", 5*time.Second, func() bool { return running.Load() == 0 })
	t.Logf("at most %d handlers and %d goroutines more than before at once", peak.Load(), peakG)
	if p := peak.Load(); p > maxStreams {
		t.Errorf("%d handlers at once, maxStreams is %d", p, maxStreams)
	}
	if peakG > 2*maxStreams+50 {
		t.Errorf("%d goroutines more than before the flood, want at most %d", peakG, 2*maxStreams+50)
	}
}

// TestH2SrvContinuationFlood: a head that never ends (HEADERS without
// END_HEADERS, then CONTINUATIONs of valid fields) ends the connection
// once it is well past maxHeaderList (8 KiB), not when the attacker stops:
// the server reads at most 1 MiB of the 64 MiB sent.
func TestH2SrvContinuationFlood(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), h2sBlockOrOK)
	c := h2sConnect(t, srv.addr).handshake().start()
	var kv []string
	for range 10 {
		kv = append(kv, "x-flood", strings.Repeat("a", 1000))
	}
	frag := bytes.Clone(c.block(kv...))
	c.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(h2sHead()...), EndStream: true})
	c.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
	sent := 0
	for ; sent < 64<<20 && c.WriteContinuation(1, false, frag) == nil; sent += len(frag) {
	}
	if got := c.outcome(1); !strings.HasPrefix(got, "GOAWAY") && got != "closed" {
		t.Errorf("after %d bytes of CONTINUATION: %s, want GOAWAY or close", sent, got)
	}
	h2sUntil(t, "return of serveConn", 2*time.Second, func() bool { return srv.ended.Load() == 1 })
	if n := srv.read.Load(); n > 1<<20 {
		t.Errorf("the server read %d bytes of a %d-byte head (maxHeaderList 8 KiB)", n, sent)
	}
}

// TestH2SrvExtraStream: a stream beyond the advertised
// SETTINGS_MAX_CONCURRENT_STREAMS is refused, and the connection serves
// again once a stream is closed.
func TestH2SrvExtraStream(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 2), h2sBlockOrOK)
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, true, h2sHead(":path", "/block")...)
	c.headers(3, true, h2sHead(":path", "/block")...)
	c.headers(5, true, h2sHead()...)
	if got := c.outcome(5); got != "RST_STREAM REFUSED_STREAM" && got != "RST_STREAM PROTOCOL_ERROR" {
		t.Fatalf("a third stream under maxStreams 2: %s, want RST_STREAM REFUSED_STREAM or PROTOCOL_ERROR", got)
	}
	c.WriteRSTStream(1, http2.ErrCodeCancel)
	c.works()
}

// TestH2SrvBodyOverContentLength: DATA beyond the declared content-length
// resets the stream, and the handler's body read fails.
func TestH2SrvBodyOverContentLength(t *testing.T) {
	read := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		read <- err
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, false, h2sHead(":method", "POST", "content-length", "5")...)
	c.WriteData(1, true, []byte("0123456789"))
	if got := c.outcome(1); got != "RST_STREAM PROTOCOL_ERROR" {
		t.Errorf("10 bytes of a 5-byte body: %s, want RST_STREAM PROTOCOL_ERROR", got)
	}
	select {
	case err := <-read:
		if err == nil {
			t.Error("the handler read an overlong body without error")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the handler's body read still blocked after 2s")
	}
}

// TestH2SrvRawFrames: what a raw client's frames get back. Stream errors
// leave the connection serving (and its HPACK state in step: h2sHead);
// connection errors get GOAWAY, then close.
func TestH2SrvRawFrames(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), h2sBlockOrOK)
	head := func(id uint32, kv ...string) func(*h2sRaw) uint32 {
		return func(c *h2sRaw) uint32 { c.headers(id, true, h2sHead(kv...)...); return id }
	}
	onOpen := func(f func(c *h2sRaw)) func(*h2sRaw) uint32 { // stream 1 open, its handler waiting
		return func(c *h2sRaw) uint32 { head(1, ":path", "/block")(c); f(c); return 1 }
	}
	setting := func(id http2.SettingID, v uint32) func(*h2sRaw) uint32 {
		return func(c *h2sRaw) uint32 { c.WriteSettings(http2.Setting{ID: id, Val: v}); return 0 }
	}
	const malformed = "RST_STREAM PROTOCOL_ERROR|:status 400" // RFC 9113 8.1.1: a response may come first
	pad := strings.Repeat("a", 3000)                          // 4 of them: 7.5 KB of HPACK, 12 KB decoded
	for _, tc := range []struct {
		name   string
		raw    bool                   // the script writes the preface itself
		script func(c *h2sRaw) uint32 // returns the stream whose outcome counts
		want   string                 // outcomes, |-separated
	}{
		{"DATA beyond the stream window", false, func(c *h2sRaw) uint32 {
			c.headers(1, false, h2sHead(":method", "POST", ":path", "/block")...)
			for sent := 0; sent <= int(c.window); sent += 16384 {
				c.WriteData(1, false, make([]byte, 16384))
			}
			return 1
		}, "RST_STREAM FLOW_CONTROL_ERROR|GOAWAY FLOW_CONTROL_ERROR"},
		{"WINDOW_UPDATE overflowing the connection window", false, func(c *h2sRaw) uint32 { c.WriteWindowUpdate(0, 1<<31-1); return 0 }, "GOAWAY FLOW_CONTROL_ERROR"},
		{"WINDOW_UPDATE overflowing a stream window", false, onOpen(func(c *h2sRaw) { c.WriteWindowUpdate(1, 1<<31-1) }), "RST_STREAM FLOW_CONTROL_ERROR"},
		{"WINDOW_UPDATE of 0 on the connection", false, func(c *h2sRaw) uint32 { c.WriteWindowUpdate(0, 0); return 0 }, "GOAWAY PROTOCOL_ERROR"},
		{"WINDOW_UPDATE of 0 on a stream", false, onOpen(func(c *h2sRaw) { c.WriteWindowUpdate(1, 0) }), "RST_STREAM PROTOCOL_ERROR"},
		{"even stream ID", false, head(2), "GOAWAY PROTOCOL_ERROR"},
		{"decreasing stream ID", false, func(c *h2sRaw) uint32 { head(5)(c); return head(3)(c) }, "GOAWAY PROTOCOL_ERROR"},
		{"PUSH_PROMISE from the client", false, onOpen(func(c *h2sRaw) {
			c.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: c.block(h2sHead()...), EndHeaders: true})
		}), "GOAWAY PROTOCOL_ERROR"},
		{"DATA on stream 0", false, func(c *h2sRaw) uint32 { c.WriteData(0, false, []byte("x")); return 0 }, "GOAWAY PROTOCOL_ERROR"},
		{"SETTINGS_MAX_FRAME_SIZE 0", false, setting(http2.SettingMaxFrameSize, 0), "GOAWAY PROTOCOL_ERROR"},
		{"SETTINGS_ENABLE_PUSH 2", false, setting(http2.SettingEnablePush, 2), "GOAWAY PROTOCOL_ERROR"},
		{"first frame not SETTINGS", true, func(c *h2sRaw) uint32 {
			io.WriteString(c.nc, http2.ClientPreface)
			c.WritePing(false, [8]byte{})
			return 0
		}, "GOAWAY PROTOCOL_ERROR"},
		{"bad preface", true, func(c *h2sRaw) uint32 { io.WriteString(c.nc, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"); return 0 }, "closed|GOAWAY PROTOCOL_ERROR"},
		{"no :method", false, head(1, ":method", ""), malformed},
		{"no :path", false, head(1, ":path", ""), malformed},
		{"connection: x", false, head(1, "connection", "x"), malformed},
		{"transfer-encoding", false, head(1, "transfer-encoding", "chunked"), malformed},
		{"te: gzip", false, head(1, "te", "gzip"), malformed},
		{"uppercase name", false, head(1, "X-Upper", "1"), malformed},
		{"head over maxHeaderList", false, head(1, "x-pad1", pad, "x-pad2", pad, "x-pad3", pad, "x-pad4", pad), ":status 431"},
		{"PING", false, func(c *h2sRaw) uint32 { c.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}); return 0 }, "PING ACK 0102030405060708"},
		{"SETTINGS", false, setting(http2.SettingInitialWindowSize, 1<<20), "SETTINGS ACK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h2sConnect(t, srv.addr)
			if !tc.raw {
				c.handshake()
			}
			got := c.start().outcome(tc.script(c))
			if !slices.Contains(strings.Split(tc.want, "|"), got) {
				t.Fatalf("%s, want %s", got, strings.ReplaceAll(tc.want, "|", " or "))
			}
			if strings.HasPrefix(got, "GOAWAY") {
				if got := c.outcome(0); got != "closed" {
					t.Errorf("after the GOAWAY: %s, want the connection closed", got)
				}
			} else if got != "closed" {
				c.works()
			}
		})
	}
}

var h2sSeed = [32]byte{'h', '2', 's'}

func h2sConfig(idle time.Duration, maxStreams uint32) *h2Server {
	return &h2Server{idleTimeout: idle, maxStreams: maxStreams, maxHeaderList: 8 << 10}
}

// h2sBlockOrOK answers "ok", but holds /block until its request ends.
func h2sBlockOrOK(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/block" {
		<-r.Context().Done()
		return
	}
	io.WriteString(w, "ok")
}

// h2sSrv serves each connection accepted on a loopback listener.
type h2sSrv struct {
	addr     string
	cancel   context.CancelFunc // ends serveConn's ctx
	accepted atomic.Int64
	ended    atomic.Int64 // serveConn calls returned
	read     atomic.Int64 // bytes serveConn read, over all connections
}

func h2sStart(t *testing.T, s *h2Server, h http.HandlerFunc) *h2sSrv {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &h2sSrv{addr: ln.Addr().String(), cancel: cancel}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv.accepted.Add(1)
			wg.Go(func() {
				s.serveConn(ctx, coalesce(&h2sCounted{c, &srv.read}), h, nil) // as exchange.go serves it
				srv.ended.Add(1)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("serveConn still running 10s after its ctx ended")
		}
	})
	return srv
}

func (s *h2sSrv) url(path string) string { return "http://" + s.addr + path }

type h2sCounted struct {
	net.Conn
	n *atomic.Int64
}

func (c *h2sCounted) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// h2sClient is x/net's client speaking h2c with prior knowledge.
func h2sClient(t *testing.T) *http2.Transport {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// h2sClientConn is one client connection, whose State shows a GOAWAY.
func h2sClientConn(t *testing.T, srv *h2sSrv) *http2.ClientConn {
	nc, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func h2sReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// h2sDo sends req and reads the whole response.
func h2sDo(t *testing.T, rt http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL.Path, err)
	}
	return resp, string(body)
}

// h2sGetAll sends n GETs at once; each must be answered 200 "ok".
func h2sGetAll(rt http.RoundTripper, url string, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			resp, err := rt.RoundTrip(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				if resp.Body.Close(); resp.StatusCode != 200 || string(body) != "ok" {
					err = fmt.Errorf("%d %q", resp.StatusCode, body)
				}
			}
			errs <- err
		}()
	}
	var all error
	for range n {
		all = errors.Join(all, <-errs)
	}
	return all
}

func h2sWait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatalf("no %s within 1s", what)
	}
}

func h2sUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

// h2sHead is a GET head for http://a.test/ with the fields kv set (a
// pseudo-field set to "" is left out), ending in x-indexed, the one field
// that goes into the HPACK table: a server that does not decode every
// block, even one it rejects, misreads the next request that refers to it.
func h2sHead(kv ...string) []string {
	head := []string{":method", "GET", ":scheme", "http", ":authority", "a.test", ":path", "/"}
	for i := 0; i+1 < len(kv); i += 2 {
		if j := slices.Index(head, kv[i]); j >= 0 && j%2 == 0 {
			head[j+1] = kv[i+1]
		} else {
			head = append(head, kv[i], kv[i+1])
		}
	}
	var out []string
	for i := 0; i < len(head); i += 2 {
		if head[i+1] != "" {
			out = append(out, head[i], head[i+1])
		}
	}
	return append(out, "x-indexed", "1")
}

// h2sRaw is a client that writes the frames a test scripts. Write errors
// are not checked: they show as the outcome "closed".
type h2sRaw struct {
	*http2.Framer
	t      *testing.T
	nc     net.Conn
	enc    *hpack.Encoder
	buf    bytes.Buffer
	last   uint32           // the highest stream ID written
	window uint32           // the server's SETTINGS_INITIAL_WINDOW_SIZE
	frames chan http2.Frame // from start: what the server sends, closed at the connection's end
	done   chan struct{}
}

func h2sConnect(t *testing.T, addr string) *h2sRaw {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return h2sRawOn(t, nc)
}

// h2sRawOn is an h2sRaw on nc, which it closes at the test's end.
func h2sRawOn(t *testing.T, nc net.Conn) *h2sRaw {
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &h2sRaw{Framer: http2.NewFramer(nc, nc), t: t, nc: nc, window: 65535, done: make(chan struct{})}
	c.AllowIllegalWrites = true
	c.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.buf)
	t.Cleanup(func() { close(c.done); nc.Close() })
	return c
}

// handshake writes the preface and SETTINGS s, and reads up to the server's
// SETTINGS and its ACK of s.
func (c *h2sRaw) handshake(s ...http2.Setting) *h2sRaw {
	c.t.Helper()
	io.WriteString(c.nc, http2.ClientPreface)
	c.WriteSettings(s...)
	for settings, ack := false, false; !settings || !ack; {
		f, err := c.ReadFrame()
		if err != nil {
			c.t.Fatalf("handshake: %v", err)
		}
		if f, ok := f.(*http2.SettingsFrame); ok && f.IsAck() {
			ack = true
		} else if ok {
			settings = true
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				c.window = v
			}
			if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
				c.enc.SetMaxDynamicTableSizeLimit(v)
			}
			c.WriteSettingsAck()
		}
	}
	return c
}

// stall opens all windows to their maximum: only a full socket stops the
// server's writes, for this client never reads after its handshake.
func (c *h2sRaw) stall() *h2sRaw {
	c.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	c.WriteWindowUpdate(0, 1<<31-1-65535)
	return c
}

// start reads the server's frames into c.frames from now on.
func (c *h2sRaw) start() *h2sRaw {
	c.frames = make(chan http2.Frame, 1<<14)
	go func() {
		defer close(c.frames)
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			select {
			case c.frames <- f: // of a DATA frame, only the length stays valid
			case <-c.done:
				return
			}
		}
	}()
	return c
}

// outcome waits (3s at most) for the server's answer to stream id
// (":status 200", "RST_STREAM CANCEL"), a GOAWAY ("GOAWAY PROTOCOL_ERROR"),
// a PING or SETTINGS ACK, or the connection's end ("closed").
func (c *h2sRaw) outcome(id uint32) string {
	timeout := time.After(3 * time.Second)
	for {
		var f http2.Frame
		select {
		case f = <-c.frames:
		case <-timeout:
			return "nothing in 3s"
		}
		switch f := f.(type) {
		case nil:
			return "closed"
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return ":status " + f.PseudoValue("status")
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST_STREAM " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return "GOAWAY " + f.ErrCode.String()
		case *http2.PingFrame:
			if f.IsAck() {
				return fmt.Sprintf("PING ACK %x", f.Data)
			}
		case *http2.SettingsFrame:
			if f.IsAck() {
				return "SETTINGS ACK"
			}
		}
	}
}

// block is the HPACK block of the fields kv.
func (c *h2sRaw) block(kv ...string) []byte {
	c.buf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1], Sensitive: kv[i] != "x-indexed"})
	}
	return c.buf.Bytes()
}

func (c *h2sRaw) headers(id uint32, end bool, kv ...string) {
	c.last = max(c.last, id)
	c.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(kv...), EndStream: end, EndHeaders: true})
}

// works fails the test unless a GET on a new stream is answered 200.
func (c *h2sRaw) works() {
	c.t.Helper()
	id := c.last + 2
	if c.last == 0 {
		id = 1
	}
	c.headers(id, true, h2sHead()...)
	if got := c.outcome(id); got != ":status 200" {
		c.t.Errorf("a GET after that: %s, want :status 200 (the connection keeps serving)", got)
	}
}
