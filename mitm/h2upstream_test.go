package mitm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The upstreams here speak h2c with prior knowledge on loopback: x/net's
// http2.Server for well-behaved ones (startUp2), a Framer driven by a
// script for misbehaving ones (startUp2Raw). The transport dials them
// whatever req.URL says. Every request's context ends after 20s at most.

// TestH2UpGet: the request reaches the upstream with :authority from
// req.Host, :scheme and :path from req.URL, its fields lower-cased and
// none added; the answer comes back with canonical keys, its length and
// body. The client's SETTINGS turn push off and carry maxHeaderList.
func TestH2UpGet(t *testing.T) {
	seen := make(chan *up2Raw, 1)
	up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
		c.first = f
		seen <- c
		return errors.Join(c.headers(f.StreamID, false, ":status", "201", "content-type", "text/plain",
			"x-upstream", "a", "x-upstream", "b", "content-length", "5"), c.WriteData(f.StreamID, true, []byte("hello")))
	})
	tr := up2Transport(t, up.dial, time.Minute)
	req := up2Req(t, "GET", "https://unreachable.invalid/v1/items?q=a%20b&x=1", nil)
	req.Host = "api.test:8443"
	req.Header.Set("X-Request-Id", "r1")
	req.Header["Accept"] = []string{"text/plain", "*/*"}
	resp := up2RoundTrip(t, tr, req)

	if resp.StatusCode != 201 || resp.ProtoMajor != 2 || resp.ContentLength != 5 {
		t.Errorf("status %d, proto %s, length %d; want 201, HTTP/2.0, 5", resp.StatusCode, resp.Proto, resp.ContentLength)
	}
	if !slices.Equal(resp.Header["Content-Type"], []string{"text/plain"}) || !slices.Equal(resp.Header["X-Upstream"], []string{"a", "b"}) {
		t.Errorf("response header %v, want Content-Type [text/plain] and X-Upstream [a b]", resp.Header)
	}
	if body := readAll(t, resp.Body); body != "hello" {
		t.Errorf("body %q, want hello", body)
	}
	c := <-seen
	for name, want := range map[string]string{"method": "GET", "scheme": "https", "authority": "api.test:8443", "path": "/v1/items?q=a%20b&x=1"} {
		if got := c.first.PseudoValue(name); got != want {
			t.Errorf(":%s %q, want %q", name, got, want)
		}
	}
	fields := map[string][]string{}
	for _, hf := range c.first.RegularFields() {
		fields[hf.Name] = append(fields[hf.Name], hf.Value)
	}
	if want := map[string][]string{"x-request-id": {"r1"}, "accept": {"text/plain", "*/*"}}; !maps.EqualFunc(fields, want, slices.Equal) {
		t.Errorf("upstream saw fields %v, want exactly %v", fields, want)
	}
	if push, ok := c.settings[http2.SettingEnablePush]; !ok || push != 0 || c.settings[http2.SettingMaxHeaderListSize] != 1<<20 {
		t.Errorf("client SETTINGS %v: want ENABLE_PUSH 0 and MAX_HEADER_LIST_SIZE %d", c.settings, 1<<20)
	}
}

// TestH2UpLargeBodies: bodies many times the flow-control windows cross
// intact both ways. The transport is full duplex: the echo's headers come
// back before a byte of the upload is written. A reader that stalls holds
// the upstream back instead of buffering the rest.
func TestH2UpLargeBodies(t *testing.T) {
	t.Run("8MiB echoed while uploading", func(t *testing.T) {
		up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Body.Read(buf)
				if _, werr := w.Write(buf[:n]); werr != nil || err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		})
		tr := up2Transport(t, up.dial, time.Minute)
		payload := up2Bytes(8<<20, 1)
		pr, pw := io.Pipe() // a body of unknown length, as net/http reads ContentLength 0 with a Body
		t.Cleanup(func() { pw.CloseWithError(errors.New("test over")) })
		resp := up2RoundTrip(t, tr, up2Req(t, "POST", "http://api.test/echo", pr))
		go func() {
			_, err := pw.Write(payload)
			pw.CloseWithError(err)
		}()
		h := sha256.New()
		if n, err := io.Copy(h, resp.Body); err != nil || !bytes.Equal(h.Sum(nil), up2Sum(payload)) {
			t.Errorf("echo: %d bytes, err %v; want the %d bytes sent (sha256 differs)", n, err, len(payload))
		}
	})
	t.Run("20MiB download read slowly", func(t *testing.T) {
		const size = 20 << 20
		payload := up2Bytes(size, 2)
		var written atomic.Int64
		up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
			for off := 0; off < size; off += 64 << 10 {
				n, err := w.Write(payload[off:min(off+64<<10, size)])
				if written.Add(int64(n)); err != nil {
					return
				}
			}
		})
		tr := up2Transport(t, up.dial, time.Minute)
		resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/big", nil))
		h, buf := sha256.New(), make([]byte, 16<<10)
		n, err := io.ReadFull(resp.Body, buf)
		h.Write(buf[:n])
		for last, deadline := int64(-1), time.Now().Add(3*time.Second); written.Load() != last && time.Now().Before(deadline); {
			last = written.Load() // until the upstream stops writing
			time.Sleep(100 * time.Millisecond)
		}
		if w := written.Load(); w >= size {
			t.Errorf("the upstream wrote all %d bytes while the client had read %d: nothing held it back", w, n)
		} else {
			t.Logf("the upstream stalled %d bytes ahead of the reader", w-int64(n))
		}
		total := int64(n)
		for i := 0; err == nil; i++ {
			n, err = resp.Body.Read(buf)
			h.Write(buf[:n])
			if total += int64(n); i%64 == 0 { // a pause every MiB or so
				time.Sleep(5 * time.Millisecond)
			}
		}
		if err != io.EOF || !bytes.Equal(h.Sum(nil), up2Sum(payload)) {
			t.Errorf("download: %d bytes, err %v; want %d bytes then EOF (sha256 differs)", total, err, size)
		}
	})
}

// TestH2UpTrailers: request trailers declared in req.Trailer and set while
// the body is read reach the upstream after the body (sent with its
// content-length); the upstream's trailers, declared or not, are in
// resp.Trailer once the body has returned io.EOF, the declared ones
// announced from the start. The transport closes the request body.
func TestH2UpTrailers(t *testing.T) {
	seen := make(chan string, 1)
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
		declared := slices.Sorted(maps.Keys(r.Trailer))
		body, _ := io.ReadAll(r.Body)
		seen <- fmt.Sprintf("body %q, length %d, trailers %v, X-Req-Sum %q", body, r.ContentLength, declared, r.Trailer.Get("X-Req-Sum"))
		w.Header().Set("Trailer", "X-Declared")
		io.WriteString(w, "answer")
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
	})
	tr := up2Transport(t, up.dial, time.Minute)
	body := &up2Body{Reader: strings.NewReader("payload")}
	req := up2Req(t, "POST", "http://api.test/t", body)
	req.ContentLength = 7
	req.Trailer = http.Header{"X-Req-Sum": nil}
	body.onEOF = func() { req.Trailer.Set("X-Req-Sum", "s1") }
	resp := up2RoundTrip(t, tr, req)

	if _, ok := resp.Trailer["X-Declared"]; !ok || resp.Trailer.Get("X-Declared") != "" || resp.Header.Get("Trailer") != "" {
		t.Errorf("before the body: Trailer %v, Header %v; want X-Declared announced without its value, and no Trailer header", resp.Trailer, resp.Header)
	}
	if got := readAll(t, resp.Body); got != "answer" {
		t.Errorf("body %q, want answer", got)
	}
	if d, u := resp.Trailer.Get("X-Declared"), resp.Trailer.Get("X-Undeclared"); d != "d" || u != "u" {
		t.Errorf("after EOF: Trailer %v, want X-Declared d and X-Undeclared u", resp.Trailer)
	}
	if got, want := <-seen, `body "payload", length 7, trailers [X-Req-Sum], X-Req-Sum "s1"`; got != want {
		t.Errorf("upstream saw %s\nwant %s", got, want)
	}
	up2Until(t, "close of the request body by the transport", 2*time.Second, body.closed.Load)
}

// TestH2UpConcurrentStreams: with SETTINGS_MAX_CONCURRENT_STREAMS 2,
// twenty requests at once are all at the upstream together, on new
// connections rather than queued behind full ones, and none fails.
func TestH2UpConcurrentStreams(t *testing.T) {
	const n = 20
	together, _, dials, _ := up2Together(t, &http2.Server{MaxConcurrentStreams: 2}, n)
	if together != n {
		t.Errorf("at most %d requests were at the upstream at once, want all %d", together, n)
	}
	if dials < n/2 || dials > n {
		t.Errorf("%d dials, want %d to %d for %d requests two to a connection", dials, n/2, n, n)
	}
}

// TestH2UpStreamsPerConnectionCapped: an upstream that allows 250
// streams a connection still gets at most h2StreamsPerConn on each (the
// streams of one connection share its lock): 2×h2StreamsPerConn+1
// requests at once are at the upstream together, on three connections.
func TestH2UpStreamsPerConnectionCapped(t *testing.T) {
	const n = 2*h2StreamsPerConn + 1
	together, perConn, dials, tr := up2Together(t, &http2.Server{MaxConcurrentStreams: 250}, n)
	if together != n {
		t.Errorf("at most %d requests were at the upstream at once, want all %d", together, n)
	}
	if perConn > h2StreamsPerConn {
		t.Errorf("%d streams at once on one connection, want at most %d", perConn, h2StreamsPerConn)
	}
	if dials != 3 {
		t.Errorf("%d dials for %d requests at once, want 3", dials, n)
	}
	// Every stream has ended: no connection may still be passed over as
	// full by a request looking without the transport's lock.
	up2Until(t, "every connection's full hint cleared", 2*time.Second, func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, c := range tr.conns {
			if c.full.Load() {
				return false
			}
		}
		return len(tr.conns) == 3
	})
}

// up2Together sends n GETs at once through a transport to srv, whose
// handler holds each until all n are there (3s at most), and fails the
// test unless each gets its answer. It returns the most requests the
// upstream held at once, in all and on one connection, the dials and
// the transport.
func up2Together(t *testing.T, srv *http2.Server, n int) (together, perConn, dials int, tr *h2Transport) {
	var mu sync.Mutex
	inFlight, onConn := 0, map[string]int{}
	all, once := make(chan struct{}), sync.Once{}
	up := startUp2(t, srv, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		onConn[r.RemoteAddr]++
		together, perConn = max(together, inFlight), max(perConn, onConn[r.RemoteAddr])
		if inFlight == n {
			once.Do(func() { close(all) })
		}
		mu.Unlock()
		defer func() { mu.Lock(); inFlight--; onConn[r.RemoteAddr]--; mu.Unlock() }()
		select { // until all are here
		case <-all:
		case <-time.After(3 * time.Second):
		}
		io.WriteString(w, r.URL.Path)
	})
	tr = up2Transport(t, up.dial, time.Minute)
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- up2Get(tr, fmt.Sprint("/", i), fmt.Sprint("/", i)) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return together, perConn, int(up.dials.Load()), tr
}

// TestH2UpRefusedStreamRetried: a stream the upstream refuses
// (RST_STREAM REFUSED_STREAM: it did nothing with it) is sent again.
func TestH2UpRefusedStreamRetried(t *testing.T) {
	var requests atomic.Int32
	up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
		for {
			var err error
			if requests.Add(1) == 1 {
				err = c.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			} else {
				err = c.respond(f.StreamID, "second try")
			}
			if err == nil {
				f, err = c.request()
			}
			if err != nil {
				return err
			}
		}
	})
	tr := up2Transport(t, up.dial, time.Minute)
	if err := up2Get(tr, "/", "second try"); err != nil {
		t.Error(err)
	}
	if r := requests.Load(); r != 2 {
		t.Errorf("the upstream saw %d requests, want 2", r)
	}
}

// TestH2UpGoAwayRetriesStreamsAboveLast: after GOAWAY with last-stream-id
// 3, stream 3 is answered on its connection and the bodiless request on
// stream 5 is sent again on a new one.
func TestH2UpGoAwayRetriesStreamsAboveLast(t *testing.T) {
	sawA := make(chan struct{})
	up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
		if err := c.respond(f.StreamID, fmt.Sprint("conn ", c.n)); err != nil {
			return err
		}
		if c.n > 1 {
			return c.serve(fmt.Sprint("conn ", c.n))
		}
		a, err := c.request()
		if err != nil {
			return err
		}
		close(sawA)
		b, err := c.request()
		if err != nil {
			return err
		}
		if a.PseudoValue("path") != "/a" || b.PseudoValue("path") != "/b" {
			return fmt.Errorf("streams %d %s and %d %s, want /a then /b", a.StreamID, a.PseudoValue("path"), b.StreamID, b.PseudoValue("path"))
		}
		return errors.Join(c.WriteGoAway(a.StreamID, http2.ErrCodeNo, nil), c.respond(a.StreamID, "conn 1"))
	})
	tr := up2Transport(t, up.dial, time.Minute)
	if err := up2Get(tr, "/warm", "conn 1"); err != nil {
		t.Fatal(err)
	}
	a, b := make(chan error, 1), make(chan error, 1)
	go func() { a <- up2Get(tr, "/a", "conn 1") }() // at last-stream-id
	up2Wait(t, sawA, "arrival of GET /a at the upstream", 5*time.Second)
	go func() { b <- up2Get(tr, "/b", "conn 2") }() // above it
	for _, ch := range []chan error{a, b} {
		if err := <-ch; err != nil {
			t.Error(err)
		}
	}
}

// TestH2UpCancelResetsStream: cancelling a request waiting for its head,
// by its context or by the deprecated req.Cancel, ends RoundTrip at once
// and resets the stream: the upstream handler's context ends.
func TestH2UpCancelResetsStream(t *testing.T) {
	for _, how := range []string{"context", "Request.Cancel"} {
		t.Run(how, func(t *testing.T) {
			entered, ctxDone := make(chan struct{}), make(chan struct{})
			up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				select {
				case <-r.Context().Done():
					close(ctxDone)
				case <-time.After(5 * time.Second):
				}
			})
			tr := up2Transport(t, up.dial, time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/slow", nil)
			stop := cancel
			if how == "Request.Cancel" {
				ch := make(chan struct{})
				req.Cancel, stop = ch, func() { close(ch) }
			}
			errc := make(chan error, 1)
			go func() {
				resp, err := tr.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			up2Wait(t, entered, "arrival of the request at the upstream", 5*time.Second)
			stop()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("RoundTrip returned a response after the cancel")
				}
			case <-time.After(time.Second):
				t.Fatal("RoundTrip still running 1s after the cancel")
			}
			up2Wait(t, ctxDone, "end of the upstream handler's context (RST_STREAM)", time.Second)
		})
	}
}

// TestH2UpBodyCloseResetsStream: closing a response body before EOF
// resets the stream, so the upstream stops sending.
func TestH2UpBodyCloseResetsStream(t *testing.T) {
	ended := make(chan struct{})
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); w.(http.Flusher).Flush() {
			if _, err := w.Write(chunk); err != nil || r.Context().Err() != nil {
				close(ended)
				return
			}
		}
	})
	tr := up2Transport(t, up.dial, time.Minute)
	resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/endless", nil))
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	up2Wait(t, ended, "failed write in the upstream handler after Body.Close", time.Second)
}

// TestH2UpResponseLength: resp.ContentLength is the content-length, -1
// without one and 0 when the HEADERS end the stream; a body longer than
// its content-length is an error, a shorter one io.ErrUnexpectedEOF.
func TestH2UpResponseLength(t *testing.T) {
	errAny := errors.New("any error")
	for _, tc := range []struct {
		name          string
		contentLength string   // the upstream's, "" for none
		data          []string // its DATA frames, the last with END_STREAM; none: HEADERS end the stream
		wantLength    int64
		wantBody      string
		wantErr       error
	}{
		{"content-length", "5", []string{"hello"}, 5, "hello", nil},
		{"no content-length", "", []string{"hel", "lo"}, -1, "hello", nil},
		{"HEADERS end the stream", "", nil, 0, "", nil},
		{"DATA beyond content-length", "5", []string{"hello", " world"}, 5, "", errAny},
		{"END_STREAM short of content-length", "10", []string{"hello"}, 10, "", io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
				head := []string{":status", "200"}
				if tc.contentLength != "" {
					head = append(head, "content-length", tc.contentLength)
				}
				err := c.headers(f.StreamID, len(tc.data) == 0, head...)
				for i, d := range tc.data {
					err = errors.Join(err, c.WriteData(f.StreamID, i == len(tc.data)-1, []byte(d)))
				}
				return err
			})
			tr := up2Transport(t, up.dial, time.Minute)
			resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/", nil))
			body, err := io.ReadAll(resp.Body)
			if resp.ContentLength != tc.wantLength {
				t.Errorf("ContentLength %d, want %d", resp.ContentLength, tc.wantLength)
			}
			switch {
			case tc.wantErr == nil && (err != nil || string(body) != tc.wantBody):
				t.Errorf("body %q, %v; want %q", body, err, tc.wantBody)
			case tc.wantErr == errAny && err == nil:
				t.Errorf("body %q read without error", body)
			case tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Errorf("body read error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestH2UpHostileUpstream: an upstream breaking the protocol gets an error,
// never a made-up response or memory without bound.
func TestH2UpHostileUpstream(t *testing.T) {
	t.Run("no :status", func(t *testing.T) {
		up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
			return c.headers(f.StreamID, true, "content-type", "text/plain")
		})
		tr := up2Transport(t, up.dial, time.Minute)
		if resp, err := tr.RoundTrip(up2Req(t, "GET", "http://api.test/", nil)); err == nil {
			resp.Body.Close()
			t.Errorf("RoundTrip: status %d, want an error", resp.StatusCode)
		}
	})
	t.Run("PUSH_PROMISE", func(t *testing.T) {
		hungUp := make(chan string, 1)
		up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
			promised := c.block(":method", "GET", ":scheme", "http", ":authority", "api.test", ":path", "/pushed")
			err := errors.Join(c.WritePushPromise(http2.PushPromiseParam{StreamID: f.StreamID, PromiseID: 2, BlockFragment: promised, EndHeaders: true}),
				c.respond(f.StreamID, "hello"))
			hungUp <- c.hangUp(0)
			return err
		})
		tr := up2Transport(t, up.dial, time.Minute)
		if resp, err := tr.RoundTrip(up2Req(t, "GET", "http://api.test/", nil)); err == nil {
			resp.Body.Close()
			t.Errorf("RoundTrip: status %d despite a PUSH_PROMISE, want an error", resp.StatusCode)
		}
		select {
		case how := <-hungUp:
			if how != "GOAWAY PROTOCOL_ERROR" && !strings.HasPrefix(how, "closed") {
				t.Errorf("the client ended the connection with %s, want GOAWAY PROTOCOL_ERROR or a close", how)
			}
		case <-time.After(2 * time.Second):
			t.Error("the connection still up 2s after a PUSH_PROMISE")
		}
	})
	t.Run("DATA beyond the window", func(t *testing.T) {
		verdict := make(chan string, 1)
		up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
			window, ok := c.settings[http2.SettingInitialWindowSize]
			if !ok {
				window = 65535
			}
			if err := c.headers(f.StreamID, false, ":status", "200"); err != nil {
				return err
			}
			peer := make(chan string, 1)
			go func() { peer <- c.hangUp(f.StreamID) }()
			// 4MiB past the window, then the client's answer, which may
			// come late: it reads the frames in order.
			c.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
			chunk, sent := make([]byte, 16<<10), 0
			for ; sent < int(window)+4<<20 && c.WriteData(f.StreamID, false, chunk) == nil; sent += len(chunk) {
			}
			select {
			case how := <-peer:
				verdict <- fmt.Sprintf("%s (%d bytes sent, window %d)", how, sent, window)
			case <-time.After(3 * time.Second):
				verdict <- fmt.Sprintf("nothing 3s after %d bytes (window %d)", sent, window)
			}
			return nil
		})
		tr := up2Transport(t, up.dial, time.Minute)
		resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/", nil))
		var how string
		select {
		case how = <-verdict:
		case <-time.After(10 * time.Second):
			t.Fatal("no verdict from the flooding upstream in 10s")
		}
		if t.Logf("the client's answer: %s", how); !strings.Contains(how, "FLOW_CONTROL_ERROR") && !strings.HasPrefix(how, "closed") {
			t.Errorf("the client answered a flood beyond its window with %s, want RST_STREAM or GOAWAY FLOW_CONTROL_ERROR, or a close", how)
		}
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("body read without error after a flow-control violation")
		}
	})
}

// TestH2UpIdleTimeout: a connection idle for idleTimeout is closed, not
// before.
func TestH2UpIdleTimeout(t *testing.T) {
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tr := up2Transport(t, up.dial, 200*time.Millisecond)
	if err := up2Get(tr, "/", "ok"); err != nil {
		t.Fatal(err)
	}
	idle := time.Now()
	up2Until(t, "close of the idle connection at the upstream", 2*time.Second, func() bool { return up.ended.Load() == 1 })
	if d := time.Since(idle); d < 150*time.Millisecond {
		t.Errorf("closed after %v idle, want about 200ms", d)
	}
}

// TestH2UpClosedWhileIdle: an upstream that closes a connection while it
// is idle costs the next request nothing: it goes on a new connection.
func TestH2UpClosedWhileIdle(t *testing.T) {
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })
	tr := up2Transport(t, up.dial, time.Minute)
	const n = 5
	for i := range int32(n) {
		if i > 0 {
			up.closeConns()
			up2Until(t, "close at the upstream", 2*time.Second, func() bool { return up.ended.Load() == i })
		}
		if err := up2Get(tr, fmt.Sprint("/", i), fmt.Sprint("/", i)); err != nil {
			t.Fatalf("after %d closes: %v", i, err)
		}
	}
	if d := up.dials.Load(); d != n {
		t.Errorf("%d dials for %d requests each after a close, want %d", d, n, n)
	}
}

// up2Server is an HTTP/2 upstream on loopback (h2c, prior knowledge).
type up2Server struct {
	addr         string
	dials, ended atomic.Int32 // connections dialed; connections the upstream is done with
	mu           sync.Mutex
	conns        []net.Conn
}

// startUp2 serves h with srv.ServeConn on every connection.
func startUp2(t *testing.T, srv *http2.Server, h http.HandlerFunc) *up2Server {
	return up2Start(t, func(_ int, c net.Conn) { srv.ServeConn(c, &http2.ServeConnOpts{Handler: h}) })
}

// startUp2Raw does the handshake on every connection (preface, SETTINGS
// both ways), reads the first request's HEADERS and runs script, then
// discards what the client sends until it hangs up. A script's error is
// only logged: the client's side of each test says what went wrong.
func startUp2Raw(t *testing.T, script func(c *up2Raw, f *http2.MetaHeadersFrame) error) *up2Server {
	return up2Start(t, func(n int, nc net.Conn) {
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		c, err := up2Handshake(nc, n)
		var f *http2.MetaHeadersFrame
		if err == nil {
			f, err = c.request()
		}
		if err == nil {
			err = script(c, f)
		}
		if err != nil && err != io.EOF {
			t.Logf("raw upstream conn %d: %v", n, err)
		}
		io.Copy(io.Discard, nc)
	})
}

func up2Start(t *testing.T, serve func(n int, c net.Conn)) *up2Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &up2Server{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); s.closeConns(); wg.Wait() })
	wg.Go(func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			wg.Go(func() { serve(n, c); c.Close(); s.ended.Add(1) })
		}
	})
	return s
}

func (s *up2Server) dial(ctx context.Context) (net.Conn, error) {
	s.dials.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.addr)
}

// closeConns closes the upstream's side of every connection.
func (s *up2Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

// up2Raw is one connection of a scripted upstream.
type up2Raw struct {
	*http2.Framer
	nc       net.Conn
	n        int                        // which connection, from 1
	settings map[http2.SettingID]uint32 // the client's
	first    *http2.MetaHeadersFrame
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
}

func up2Handshake(nc net.Conn, n int) (*up2Raw, error) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
		return nil, fmt.Errorf("client preface %q: %v", preface, err)
	}
	c := &up2Raw{Framer: http2.NewFramer(nc, nc), nc: nc, n: n, settings: map[http2.SettingID]uint32{}}
	c.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if err := c.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100}); err != nil {
		return nil, err
	}
	f, err := c.ReadFrame()
	sf, ok := f.(*http2.SettingsFrame)
	if err != nil || !ok || sf.IsAck() {
		return nil, fmt.Errorf("client's first frame %v (%v), want SETTINGS", f, err)
	}
	sf.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
	return c, c.WriteSettingsAck()
}

// request reads up to the next HEADERS, answering SETTINGS and PING.
func (c *up2Raw) request() (*http2.MetaHeadersFrame, error) {
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f, nil
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.WritePing(true, f.Data)
			}
		}
	}
}

// hangUp only reads, until the client resets stream id, sends GOAWAY or
// closes, and says which.
func (c *up2Raw) hangUp(id uint32) string {
	for {
		switch f, err := c.ReadFrame(); f := f.(type) {
		case nil:
			return "closed: " + err.Error()
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST_STREAM " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return "GOAWAY " + f.ErrCode.String()
		}
	}
}

// serve answers every further request with body.
func (c *up2Raw) serve(body string) error {
	for {
		f, err := c.request()
		if err == nil {
			err = c.respond(f.StreamID, body)
		}
		if err != nil {
			return err
		}
	}
}

// block is an HPACK block of the name, value pairs kv.
func (c *up2Raw) block(kv ...string) []byte {
	c.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return c.hbuf.Bytes()
}

func (c *up2Raw) headers(id uint32, end bool, kv ...string) error {
	return c.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(kv...), EndStream: end, EndHeaders: true})
}

func (c *up2Raw) respond(id uint32, body string) error {
	return errors.Join(c.headers(id, false, ":status", "200", "content-length", strconv.Itoa(len(body))),
		c.WriteData(id, true, []byte(body)))
}

func up2Transport(t *testing.T, dial func(context.Context) (net.Conn, error), idle time.Duration) *h2Transport {
	tr := newH2Transport(dial, idle, 1<<20)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func up2Req(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// up2RoundTrip fails the test unless the response head comes within 5s.
func up2RoundTrip(t *testing.T, tr http.RoundTripper, req *http.Request) *http.Response {
	t.Helper()
	var resp *http.Response
	done := make(chan error, 1)
	go func() {
		var err error
		resp, err = tr.RoundTrip(req)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %s: %v", req.Method, req.URL, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	case <-time.After(5 * time.Second):
		t.Fatalf("%s %s: no response head in 5s", req.Method, req.URL)
		return nil
	}
}

// up2Get GETs path and fails unless the answer is 200 with body want.
func up2Get(tr http.RoundTripper, path, want string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test"+path, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if body, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 || string(body) != want {
		return fmt.Errorf("GET %s: %d %q, %v; want 200 %q", path, resp.StatusCode, body, err, want)
	}
	return nil
}

// up2Body is a request body that runs onEOF at its end and records Close.
type up2Body struct {
	io.Reader
	onEOF  func()
	closed atomic.Bool
}

func (b *up2Body) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF && b.onEOF != nil {
		b.onEOF()
		b.onEOF = nil
	}
	return n, err
}

func (b *up2Body) Close() error { b.closed.Store(true); return nil }

func up2Bytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func up2Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func up2Wait(t *testing.T, ch <-chan struct{}, what string, d time.Duration) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("no %s within %v", what, d)
	}
}

func up2Until(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

// TestH2QueueKeepsOrder: a stream's received data comes out of its queue
// byte for byte in order, whatever the sizes written and read, and the
// count of bytes held stays true.
func TestH2QueueKeepsOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var q h2Queue
	var in, out []byte
	for i := 0; i < 2000; i++ {
		if rng.IntN(2) == 0 {
			p := up2Bytes(rng.IntN(40<<10), byte(i))
			q.write(p)
			in = append(in, p...)
		} else {
			p := make([]byte, rng.IntN(40<<10))
			out = append(out, p[:q.read(p)]...)
		}
		if q.n != len(in)-len(out) {
			t.Fatalf("after step %d the queue says it holds %d bytes, want %d", i, q.n, len(in)-len(out))
		}
	}
	rest := make([]byte, q.n)
	out = append(out, rest[:q.read(rest)]...)
	if !bytes.Equal(in, out) || q.n != 0 || len(q.chunks) != 0 {
		t.Fatalf("read %d bytes (equal: %v) of %d written; %d held in %d chunks", len(out), bytes.Equal(in, out), len(in), q.n, len(q.chunks))
	}
	q.write([]byte("left unread"))
	q.release()
	if q.n != 0 || q.chunks != nil {
		t.Fatalf("release left %d bytes in %d chunks", q.n, len(q.chunks))
	}
}
