package mitm

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// Attacker tests for the HTTP/2 server, one per defect the review of its
// first cut found (each fails on cb1f0ae).

// TestH2SrvGoAwayLetsStreamsFinish: the client's GOAWAY, or an answer with
// Connection: close on another stream (Sluice's own 413 and 403 answers
// carry it), stops new streams but lets the open ones run to their end,
// as x/net's server does; only the proxy's stopping bounds them (drain).
func TestH2SrvGoAwayLetsStreamsFinish(t *testing.T) {
	s := h2sConfig(10*time.Second, 250)
	s.drain = 200 * time.Millisecond
	srv := h2sStart(t, s, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		for i := range 6 { // 600 ms: three drains long
			io.WriteString(w, strings.Repeat("x", i+1))
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	for _, how := range []string{"client GOAWAY", "Connection: close"} {
		t.Run(how, func(t *testing.T) {
			c := h2sConnect(t, srv.addr).handshake().start()
			c.headers(1, true, h2sHead(":path", "/slow")...)
			if how == "client GOAWAY" {
				c.WriteGoAway(0, http2.ErrCodeNo, nil)
			} else {
				c.headers(3, true, h2sHead(":path", "/close")...)
			}
			got, end := 0, ""
			for end == "" {
				select {
				case f := <-c.frames:
					switch f := f.(type) {
					case nil:
						end = "closed"
					case *http2.DataFrame:
						if f.StreamID == 1 {
							got += int(f.Length)
							if f.StreamEnded() {
								end = "END_STREAM"
							}
						}
					case *http2.RSTStreamFrame:
						if f.StreamID == 1 {
							end = "RST_STREAM " + f.ErrCode.String()
						}
					}
				case <-time.After(3 * time.Second):
					end = "nothing in 3s"
				}
			}
			if end != "END_STREAM" || got != 21 {
				t.Errorf("the open stream: %d of 21 bytes, then %s; want all of it and END_STREAM", got, end)
			}
		})
	}
}

// TestH2SrvNothingAfterACompleteExchange: a request whose HEADERS end its
// stream, once answered, is closed both ways: the server sends nothing
// more on it (no RST_STREAM, RFC 9113 5.1), and later frames on it are
// refused as on a closed stream.
func TestH2SrvNothingAfterACompleteExchange(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), h2sBlockOrOK)
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, true, h2sHead()...)
	c.headers(3, true, h2sHead()...)
	var seen []string
	for pinged := false; ; {
		var f http2.Frame
		select {
		case f = <-c.frames:
		case <-time.After(3 * time.Second):
			t.Fatalf("no PING ACK in 3s; saw %v", seen)
		}
		switch f := f.(type) {
		case nil:
			t.Fatalf("closed; saw %v", seen)
		case *http2.DataFrame:
			if f.StreamEnded() && f.StreamID == 3 && !pinged {
				pinged = true
				c.WritePing(false, [8]byte{7})
			}
			seen = append(seen, fmt.Sprintf("DATA %d", f.StreamID))
		case *http2.RSTStreamFrame:
			t.Errorf("RST_STREAM %v on stream %d, closed both ways", f.ErrCode, f.StreamID)
		case *http2.PingFrame:
			if f.IsAck() {
				return
			}
		default:
			seen = append(seen, fmt.Sprintf("%T", f))
		}
	}
}

// TestH2SrvTrailersAfterEndStream: a head on a stream whose client side
// ended is a stream error (STREAM_CLOSED), not taken as trailers.
func TestH2SrvTrailersAfterEndStream(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), h2sBlockOrOK)
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, true, h2sHead(":path", "/block")...)
	c.headers(1, true, "x-late", "1")
	if got := c.outcome(1); got != "RST_STREAM STREAM_CLOSED" {
		t.Errorf("a second head after END_STREAM: %s, want RST_STREAM STREAM_CLOSED", got)
	}
	c.works()
}

// TestH2SrvWindowWithheldBound: a handler's write without a deadline of its
// own (Sluice's own answers, a cache hit) that waits for a window the
// client never grants is reset after IdleTimeout: it holds neither its
// handler nor the connection.
func TestH2SrvWindowWithheldBound(t *testing.T) {
	wrote := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(300*time.Millisecond, 250), func(w http.ResponseWriter, r *http.Request) {
		_, err := w.Write(make([]byte, 100<<10))
		wrote <- err
	})
	c := h2sConnect(t, srv.addr).handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}).start()
	c.headers(1, true, h2sHead()...)
	if got := c.outcome(1); got != ":status 200" {
		t.Fatalf("the head: %s", got)
	}
	if got := c.outcome(1); got != "RST_STREAM INTERNAL_ERROR" {
		t.Errorf("with no window for IdleTimeout: %s, want RST_STREAM INTERNAL_ERROR", got)
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Error("the handler's Write succeeded without a window")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the handler's Write still waits 3 s later (IdleTimeout 300ms)")
	}
}

// TestH2SrvSniffsWithoutWindow: the head that goes out before a window
// lets its body follow still has the Content-Type sniffed from that body.
func TestH2SrvSniffsWithoutWindow(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html><body>hello</body></html>")
	})
	c := h2sConnect(t, srv.addr).handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}).start()
	c.headers(1, true, h2sHead()...)
	select {
	case f := <-c.frames:
		for f != nil {
			if mh, ok := f.(*http2.MetaHeadersFrame); ok {
				if ct := h2sField(mh, "content-type"); ct != "text/html; charset=utf-8" {
					t.Errorf("content-type %q, want the sniffed text/html; charset=utf-8", ct)
				}
				return
			}
			f = <-c.frames
		}
		t.Fatal("closed")
	case <-time.After(3 * time.Second):
		t.Fatal("no head in 3s")
	}
}

func h2sField(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// TestH2SrvRefusesAmbiguousHeads: heads that would make the policy judge
// one request and the upstream get another, or that x/net's server
// refused (httpcommon.NewServerRequest), are reset before any handler
// runs: a :method an HTTP/1.1 upstream would read as a method and a
// target, a :path that is not absolute (opaque: the policy saw "", the
// upstream "xyz/admin"), a Host field against :authority, two Hosts,
// userinfo, an invalid authority.
func TestH2SrvRefusesAmbiguousHeads(t *testing.T) {
	var handled atomic.Int32
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
	})
	for _, tc := range []struct {
		name string
		kv   []string
	}{
		{"method with a target", []string{":method", "GET /admin HTTP/1.1"}},
		{"opaque path", []string{":path", "a:xyz/admin"}},
		{"absolute-form path", []string{":path", "https://b.test/admin"}},
		{"Host against :authority", []string{"host", "b.test"}},
		{"two Hosts", []string{":authority", "", "host", "a.test", "host", "a.test"}},
		{"userinfo", []string{":authority", "u@a.test"}},
		{"invalid authority", []string{":authority", "a test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h2sConnect(t, srv.addr).handshake().start()
			head := h2sHead(tc.kv...)
			if tc.name == "two Hosts" { // h2sHead keeps one of each name
				head = append(head, "host", "a.test")
			}
			c.headers(1, true, head...)
			if got := c.outcome(1); got != "RST_STREAM PROTOCOL_ERROR" {
				t.Errorf("%s, want RST_STREAM PROTOCOL_ERROR", got)
			}
			c.works()
		})
	}
	if n := handled.Load(); n != 7 { // the works() GETs only
		t.Errorf("%d handler calls, want 7 (none for a refused head)", n)
	}
}

// TestH2SrvBodyCloseWakesReader: closing a request body wakes a Read
// waiting on it on another goroutine (the upstream client's body writer
// stops at once).
func TestH2SrvBodyCloseWakesReader(t *testing.T) {
	read := make(chan error, 1)
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		reader := make(chan error, 1)
		go func() {
			_, err := r.Body.Read(make([]byte, 10))
			reader <- err
		}()
		time.Sleep(100 * time.Millisecond)
		r.Body.Close()
		select {
		case err := <-reader:
			read <- err
		case <-time.After(2 * time.Second):
			read <- errors.New("still blocked 2 s after Close")
		}
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, false, h2sHead(":method", "POST")...)
	c.outcome(1)
	if err := <-read; err == nil || strings.Contains(err.Error(), "still blocked") {
		t.Errorf("the Read waiting when the body was closed: %v, want an error at once", err)
	}
}

// TestH2SrvQueuedResetStreamsDontRun: streams the client resets while
// they wait for a handler slot are dropped unserved (as x/net's): a rapid
// reset costs no run of the policy chain, and no record, per stream.
func TestH2SrvQueuedResetStreamsDontRun(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	srv := h2sStart(t, h2sConfig(10*time.Second, 2), func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-release // slow to notice the reset: its slot stays taken
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	for id := uint32(1); id <= 15; id += 2 {
		c.headers(id, true, h2sHead()...)
		c.WriteRSTStream(id, http2.ErrCodeCancel) // the first two run; the rest wait for a slot
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	c.headers(17, true, h2sHead()...)
	if got := c.outcome(17); got != ":status 200" {
		t.Fatalf("the GET after: %s", got)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d handler calls, want 3 (the two running, none for the six reset while queued, the last GET)", n)
	}
}

// TestH2SrvOversizedHeadStopsItsBody: a head answered 431 whose body
// follows gets RST_STREAM NO_ERROR after the answer: the client stops
// sending what nobody reads.
func TestH2SrvOversizedHeadStopsItsBody(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), h2sBlockOrOK)
	c := h2sConnect(t, srv.addr).handshake().start()
	head := h2sHead(":method", "POST")
	for i := range 12 { // 12 KiB of fields, over maxHeaderList (8 KiB), under twice it
		head = append(head, fmt.Sprintf("x-big-%d", i), strings.Repeat("a", 1000))
	}
	c.headers(1, false, head...)
	if got := c.outcome(1); got != ":status 431" {
		t.Fatalf("%s, want :status 431", got)
	}
	if got := c.outcome(1); got != "RST_STREAM NO_ERROR" {
		t.Errorf("after the 431: %s, want RST_STREAM NO_ERROR", got)
	}
	c.works()
}

// TestH2SrvProxyStopBoundsDrainingStreams: once the client said GOAWAY
// (its open streams may run to their end), the proxy's stop still bounds
// them (drain).
func TestH2SrvProxyStopBoundsDrainingStreams(t *testing.T) {
	s := h2sConfig(10*time.Second, 250)
	s.drain = 200 * time.Millisecond
	srv := h2sStart(t, s, func(w http.ResponseWriter, r *http.Request) {
		for range 30 { // 3 s
			io.WriteString(w, "x")
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, true, h2sHead()...)
	c.WriteGoAway(0, http2.ErrCodeNo, nil)
	time.Sleep(100 * time.Millisecond)
	stopped := time.Now()
	srv.cancel() // the proxy stops
	for {
		select {
		case f := <-c.frames:
			if f == nil {
				if d := time.Since(stopped); d > time.Second {
					t.Errorf("closed %s after the stop, want within the drain (200ms)", d)
				}
				return
			}
		case <-time.After(2 * time.Second):
			t.Fatal("still open 2 s after the proxy stopped (drain 200ms)")
		}
	}
}

// TestH2SrvHeadSniffsLongWrite: a HEAD whose handler writes more than the
// server holds gets the Content-Type its GET would, and no body.
func TestH2SrvHeadSniffsLongWrite(t *testing.T) {
	srv := h2sStart(t, h2sConfig(10*time.Second, 250), func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("<html>" + strings.Repeat("a", 8<<10)))
	})
	c := h2sConnect(t, srv.addr).handshake().start()
	c.headers(1, true, h2sHead(":method", "HEAD")...)
	select {
	case f := <-c.frames:
		mh, ok := f.(*http2.MetaHeadersFrame)
		if !ok {
			t.Fatalf("first frame %T, want the head", f)
		}
		if ct := h2sField(mh, "content-type"); ct != "text/html; charset=utf-8" || !mh.StreamEnded() {
			t.Errorf("content-type %q, END_STREAM %v; want text/html; charset=utf-8 on a head that ends the stream", ct, mh.StreamEnded())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no head in 3s")
	}
}
