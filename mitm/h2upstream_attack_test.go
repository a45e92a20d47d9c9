package mitm

// What an odd or hostile HTTP/2 upstream can do to Sluice's client
// (h2upstream.go), written as the upstream: each test is one finding of
// the client's review, and fails on the code before its fix.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2UpRefusedHeadKeepsHPACKInStep: a request head over the upstream's
// SETTINGS_MAX_HEADER_LIST_SIZE is refused before a field of it reaches
// the connection's HPACK encoder. Else the encoder's table and the
// upstream's part ways, and the next request on the shared connection is
// decoded with fields of an earlier one: here Bob's would carry Alice's
// Authorization.
func TestH2UpRefusedHeadKeepsHPACKInStep(t *testing.T) {
	seen := make(chan string, 8)
	up := startUp2Script(t, []http2.Setting{{ID: http2.SettingMaxHeaderListSize, Val: 1000}}, func(c *up2Raw) error {
		for {
			f, err := c.request()
			if err != nil {
				return err
			}
			var fields []string
			for _, hf := range f.RegularFields() {
				fields = append(fields, hf.Name+": "+hf.Value)
			}
			seen <- strings.Join(fields, ", ")
			if err := c.respond(f.StreamID, "ok"); err != nil {
				return err
			}
		}
	})
	tr := up2Transport(t, up.dial, time.Minute)
	send := func(name, value string) error {
		req := up2Req(t, "GET", "http://api.test/", nil)
		req.Header.Set(name, value)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := send("Authorization", "Bearer alice-secret"); err != nil {
		t.Fatal(err)
	}
	<-seen
	if err := send("X-Pad", strings.Repeat("p", 2000)); err == nil {
		t.Fatal("a request head over the upstream's 1000-byte limit was sent")
	}
	if err := send("Cookie", "bob=1"); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != "cookie: bob=1" {
		t.Fatalf("the upstream decoded Bob's request as %q, want only his cookie", got)
	}
}

// TestH2UpInvalidSettingsEndTheConnection: SETTINGS_MAX_FRAME_SIZE 0 is
// a protocol error (RFC 9113 6.5.2), not a size to write frames in (an
// endless run of empty CONTINUATION frames, the write turn never given
// back). The request fails at once.
func TestH2UpInvalidSettingsEndTheConnection(t *testing.T) {
	up := startUp2Script(t, []http2.Setting{{ID: http2.SettingMaxFrameSize, Val: 0}}, func(c *up2Raw) error {
		_, err := c.request()
		return err
	})
	tr := up2Transport(t, up.dial, time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(up2Req(t, "GET", "http://api.test/", nil))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a request went out under SETTINGS_MAX_FRAME_SIZE 0")
		}
	case <-time.After(time.Second):
		t.Fatal("RoundTrip still running 1s after SETTINGS_MAX_FRAME_SIZE 0")
	}
}

// TestH2UpNoStreamAllowedIsNotDialedOver: an upstream whose SETTINGS
// allow no stream gets one dial, not one per turn of the request's wait;
// the request waits for room until its context ends, and the idle
// connection is closed after idleTimeout (then dialed again at most once
// per idleTimeout).
func TestH2UpNoStreamAllowedIsNotDialedOver(t *testing.T) {
	up := startUp2Script(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 0}}, func(c *up2Raw) error {
		_, err := c.request()
		return err
	})
	const idle = 300 * time.Millisecond
	tr := up2Transport(t, up.dial, idle)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip: %v, want the context's deadline", err)
	}
	if n := up.dials.Load(); n > 5 {
		t.Errorf("%d dials in 1s for one request with idleTimeout %v", n, idle)
	}
	up2Until(t, "close of every connection", 2*time.Second, func() bool { return up.ended.Load() == up.dials.Load() })
}

// TestH2UpUnusedConnectionIsClosedWhenIdle: a connection whose dial
// outlived the request that asked for it is closed after idleTimeout
// like any other.
func TestH2UpUnusedConnectionIsClosedWhenIdle(t *testing.T) {
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	slow := func(ctx context.Context) (net.Conn, error) {
		time.Sleep(100 * time.Millisecond)
		return up.dial(ctx)
	}
	tr := up2Transport(t, slow, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
	if _, err := tr.RoundTrip(req); err == nil {
		t.Fatal("RoundTrip returned before its dial")
	}
	up2Until(t, "close of the unused connection", 2*time.Second, func() bool { return up.dials.Load() == 1 && up.ended.Load() == 1 })
}

// TestH2UpStalledUpstreamLetsRequestsGo: an upstream that stops reading
// (a hung process, a black-holed link) while an upload fills the socket
// holds the connection's write turn in that upload's write. A request
// queued behind it still leaves when it is cancelled (req.Cancel), its
// client goes or its response header timeout passes, and the stalled
// write fails after idleTimeout, which closes the connection.
func TestH2UpStalledUpstreamLetsRequestsGo(t *testing.T) {
	over := make(chan struct{})
	defer close(over)
	up := startUp2Script(t, []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}}, func(c *up2Raw) error {
		if err := c.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
			return err
		}
		<-over // reads nothing more
		return nil
	})
	tr := up2Transport(t, func(ctx context.Context) (net.Conn, error) {
		c, err := up.dial(ctx)
		if err != nil {
			return nil, err
		}
		return coalesce(c), nil // as the proxy dials
	}, 2*time.Second)
	tr.headerTimeout = 600 * time.Millisecond // the upload's head is not due: its body never ends
	upload := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(up2Req(t, "POST", "http://api.test/up", io.NopCloser(bytes.NewReader(make([]byte, 256<<20)))))
		upload <- err
	}()
	time.Sleep(300 * time.Millisecond) // the upload fills the socket buffers
	req := up2Req(t, "GET", "http://api.test/", nil)
	timer := make(chan struct{})
	req.Cancel = timer
	time.AfterFunc(200*time.Millisecond, func() { close(timer) })
	start := time.Now()
	if _, err := tr.RoundTrip(req); !errors.Is(err, errH2Canceled) || time.Since(start) > time.Second {
		t.Errorf("a GET behind a stalled upload: %v after %v; want it canceled at 200ms", err, time.Since(start))
	}
	start = time.Now()
	if _, err := tr.RoundTrip(up2Req(t, "GET", "http://api.test/", nil)); !errors.Is(err, errResponseHeaderTimeout) || time.Since(start) > time.Second {
		t.Errorf("a GET behind a stalled upload: %v after %v; want the response header timeout at 600ms", err, time.Since(start))
	}
	select {
	case err := <-upload:
		if err == nil {
			t.Error("the stalled upload got a response")
		}
	case <-time.After(5 * time.Second):
		t.Error("the stalled upload's connection was not closed 5s after it stopped (idleTimeout 2s)")
	}
}

// TestH2UpStreamIDsRunOut: a connection whose stream IDs are spent takes
// no new stream (the next request goes on a new connection) and lets the
// streams still open on it finish.
func TestH2UpStreamIDsRunOut(t *testing.T) {
	release := make(chan struct{})
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	tr := up2Transport(t, up.dial, time.Minute)
	if err := up2Get(tr, "/", "ok"); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	first := tr.conns[0]
	tr.mu.Unlock()
	first.mu.Lock()
	first.nextID = h2MaxStreamID // a long-lived busy connection gets here after about 1.07e9 streams
	first.mu.Unlock()
	slow := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(up2Req(t, "POST", "http://api.test/slow", strings.NewReader("x")))
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			if err == nil && string(b) != "ok" {
				err = errors.New("body " + string(b))
			}
			resp.Body.Close()
		}
		slow <- err
	}()
	up2Until(t, "stream of the POST on the last ID", 2*time.Second, func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return len(first.streams) == 1
	})
	if err := up2Get(tr, "/next", "ok"); err != nil {
		t.Errorf("the request after the last stream ID: %v", err)
	}
	if up.dials.Load() != 2 {
		t.Errorf("%d dials, want a second connection for the request after the last ID", up.dials.Load())
	}
	close(release)
	if err := <-slow; err != nil {
		t.Errorf("the POST on the last stream ID: %v", err)
	}
}

// TestH2UpResponseHeadIsCleaned: what a response head may not carry into
// the proxy (whose HTTP/1.1 clients would read it): conflicting
// Content-Length copies are dropped (identical ones collapsed), the
// connection-specific fields removed, a head cut at the size limit
// refused, and a head that ends its stream while announcing a length
// gives a body that is missing, not an empty one.
func TestH2UpResponseHeadIsCleaned(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kv      []string
		end     bool
		wantErr bool
		wantCL  []string
		wantLen int64
		readErr error
	}{
		{name: "conflicting lengths", kv: []string{"content-length", "5", "content-length", "50"}, wantLen: -1},
		{name: "identical lengths", kv: []string{"content-length", "5", "content-length", "5"}, wantCL: []string{"5"}, wantLen: 5},
		{name: "connection-specific fields", kv: []string{"transfer-encoding", "chunked", "connection", "close", "keep-alive", "1", "upgrade", "x", "proxy-connection", "y"}, wantLen: -1},
		{name: "head cut at the limit", kv: bigFields(300), wantErr: true},
		{name: "ended with a length", kv: []string{"content-length", "5"}, end: true, wantCL: []string{"5"}, wantLen: 5, readErr: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
				if err := c.headers(f.StreamID, tc.end, append([]string{":status", "200"}, tc.kv...)...); err != nil || tc.end {
					return err
				}
				return c.WriteData(f.StreamID, true, []byte("hello"))
			})
			tr := up2Transport(t, up.dial, time.Minute)
			resp, err := tr.RoundTrip(up2Req(t, "GET", "http://api.test/", nil))
			if tc.wantErr {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("a head over the 1 MiB limit was accepted with %d fields", len(resp.Header))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			for _, k := range h2ConnFields {
				if v, ok := resp.Header[k]; ok {
					t.Errorf("%s: %q passed on", k, v)
				}
			}
			if got := resp.Header["Content-Length"]; !slices.Equal(got, tc.wantCL) || resp.ContentLength != tc.wantLen {
				t.Errorf("Content-Length %q, ContentLength %d; want %q, %d", got, resp.ContentLength, tc.wantCL, tc.wantLen)
			}
			if tc.readErr != nil {
				if _, err := io.ReadAll(resp.Body); !errors.Is(err, tc.readErr) {
					t.Errorf("body read: %v, want %v", err, tc.readErr)
				}
			}
		})
	}
}

// bigFields is n copies of a 4000-byte field: past 1 MiB once decoded,
// a few bytes each once in the upstream's HPACK table.
func bigFields(n int) []string {
	var kv []string
	for range n {
		kv = append(kv, "x-big", strings.Repeat("v", 4000))
	}
	return kv
}

// TestH2UpUnreadBodiesGiveTheWindowBack: response bodies that arrived
// whole and were closed unread (a response stage answered instead, the
// client left) give the connection's window back: after more than its
// 1 GiB of them, the next body still flows.
func TestH2UpUnreadBodiesGiveTheWindowBack(t *testing.T) {
	const size = 4<<20 - 1 // within one stream's window: it all arrives unread
	chunk := make([]byte, 64<<10)
	up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), size-n)]); err != nil {
				return
			}
		}
	})
	tr := up2Transport(t, up.dial, time.Minute)
	for i := range 300 { // 1.2 GiB
		resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/", nil))
		s, c := resp.Body.(*h2UpBody).s, resp.Body.(*h2UpBody).s.c
		up2Until(t, "whole body in the buffer", 5*time.Second, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			if !s.ended && c.recvWindow == 0 {
				t.Fatalf("request %d: the connection's window is spent (%d owed to the upstream)", i, c.unacked)
			}
			return s.ended
		})
		resp.Body.Close()
	}
}

// TestH2UpStreamsEndWithTheirRequest: a stream that nothing the caller
// does can end (an upload the upstream answered with HEADERS and
// END_STREAM and then gives no window; a HEAD answered without
// END_STREAM) is reset when the request ends: its body is closed and
// the connection goes idle.
func TestH2UpStreamsEndWithTheirRequest(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		body         bool
	}{{"upload answered early", "POST", true}, {"HEAD never ended", "HEAD", false}} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
				return c.headers(f.StreamID, tc.body, ":status", "200", "content-length", "10")
			})
			tr := up2Transport(t, up.dial, 100*time.Millisecond)
			var body io.Reader
			b := &up2Body{Reader: bytes.NewReader(make([]byte, 1<<20))}
			if tc.body {
				body = b
			}
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, tc.method, "http://api.test/", body)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			cancel() // the handler returns
			if tc.body {
				up2Until(t, "close of the request body", 2*time.Second, b.closed.Load)
			}
			up2Until(t, "close of the idle connection", 2*time.Second, func() bool { return up.ended.Load() == 1 })
		})
	}
}

// startUp2Script is a scripted upstream that sends settings as its
// SETTINGS (acking the client's as they come in c.request), then runs
// script.
func startUp2Script(t *testing.T, settings []http2.Setting, script func(c *up2Raw) error) *up2Server {
	return up2Start(t, func(n int, nc net.Conn) {
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(nc, preface); err != nil {
			return
		}
		c := &up2Raw{Framer: http2.NewFramer(nc, nc), nc: nc, n: n}
		c.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		c.enc = hpack.NewEncoder(&c.hbuf)
		if err := c.WriteSettings(settings...); err != nil {
			return
		}
		if err := script(c); err != nil && err != io.EOF {
			t.Logf("scripted upstream conn %d: %v", n, err)
		}
		io.Copy(io.Discard, nc)
	})
}

// TestH2UpResetFreesItsSlotOnlyAfterItsRST: the upstream counts a stream
// against its limit until it reads the stream's RST_STREAM, so a request
// may only take the slot after that frame went out; else it is one over
// the limit and refused with PROTOCOL_ERROR (not retried). Many requests
// through a limit of 2, some cancelled at once, some bodies closed
// unread: none fails for any other reason than its own cancel.
func TestH2UpResetFreesItsSlotOnlyAfterItsRST(t *testing.T) {
	up := startUp2(t, &http2.Server{MaxConcurrentStreams: 2}, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello")
	})
	tr := up2Transport(t, up.dial, time.Minute)
	const workers, each = 64, 40
	failures := make(chan error, workers*each)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range each {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if (g+i)%7 == 0 {
					time.AfterFunc(time.Duration(i%3)*100*time.Microsecond, cancel)
				}
				var body io.Reader
				if (g+i)%3 == 0 {
					body = bytes.NewReader(make([]byte, 20000))
				}
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://api.test/", body)
				resp, err := tr.RoundTrip(req)
				switch {
				case err != nil && ctx.Err() == nil:
					failures <- err
				case err == nil && (g+i)%5 == 0:
					resp.Body.Close() // unread
				case err == nil:
					if _, err := io.Copy(io.Discard, resp.Body); err != nil && ctx.Err() == nil {
						failures <- err
					}
					resp.Body.Close()
				}
				cancel()
			}
		})
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	// Afterwards every connection is whole again: no stream or promise
	// left, and every byte of its receive window either with the
	// upstream or owed to it.
	tr.mu.Lock()
	conns := slices.Clone(tr.conns)
	tr.mu.Unlock()
	for _, c := range conns {
		up2Until(t, "end of every stream", 2*time.Second, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.streams) == 0 })
		c.mu.Lock()
		reserved, recv, owed := c.reserved, c.recvWindow, c.unacked
		c.mu.Unlock()
		if reserved != 0 || recv+owed != h2ConnWindow {
			t.Errorf("a connection after the run: %d streams promised, receive window %d + owed %d, want 0 and %d in all", reserved, recv, owed, h2ConnWindow)
		}
	}
}

// TestH2UpWindowsSurviveResets: a stream's end gives back every byte of
// the connection's windows it held: the receive window owed to the
// upstream when a body is found longer than its Content-Length (the
// WINDOW_UPDATE goes out, not only the count), and the send window taken
// for DATA that a reset kept from going out.
func TestH2UpWindowsSurviveResets(t *testing.T) {
	t.Run("overlong body", func(t *testing.T) {
		var told atomic.Int64 // connection WINDOW_UPDATEs the upstream read
		up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
			if err := c.headers(f.StreamID, false, ":status", "200", "content-length", "5"); err != nil {
				return err
			}
			if err := c.WriteData(f.StreamID, true, []byte("0123456789")); err != nil {
				return err
			}
			for {
				fr, err := c.ReadFrame()
				if err != nil {
					return err
				}
				if wu, ok := fr.(*http2.WindowUpdateFrame); ok && wu.StreamID == 0 {
					told.Add(int64(wu.Increment))
				}
			}
		})
		tr := up2Transport(t, up.dial, time.Minute)
		resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/", nil))
		s := resp.Body.(*h2UpBody).s
		c := s.c
		up2Until(t, "whole body in the buffer", 2*time.Second, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return s.ended })
		c.mu.Lock()
		c.unacked += h2ConnWindow/2 - 1 // as after 512 MiB read: this read's bytes pass the threshold
		c.recvWindow -= h2ConnWindow/2 - 1
		before := c.recvWindow
		c.mu.Unlock()
		if _, err := resp.Body.Read(make([]byte, 64)); err == nil {
			t.Fatal("a body longer than its Content-Length read without an error")
		}
		up2Until(t, "WINDOW_UPDATE at the upstream", 2*time.Second, func() bool { return told.Load() > 0 })
		c.mu.Lock()
		credited := c.recvWindow - before
		c.mu.Unlock()
		if told.Load() != credited {
			t.Fatalf("the client counts %d bytes of window given back, the upstream was told %d", credited, told.Load())
		}
	})
	t.Run("upload reset before its DATA went out", func(t *testing.T) {
		up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
			if err := c.headers(f.StreamID, false, ":status", "200"); err != nil {
				return err
			}
			for {
				if _, err := c.ReadFrame(); err != nil {
					return err
				}
			}
		})
		tr := up2Transport(t, up.dial, time.Minute)
		pr, pw := io.Pipe()
		defer pw.Close()
		resp := up2RoundTrip(t, tr, up2Req(t, "POST", "http://api.test/", pr))
		c := resp.Body.(*h2UpBody).s.c
		c.mu.Lock()
		start := c.sendWindow
		c.mu.Unlock()
		c.lockW() // another stream's write holds the turn
		go pw.Write(make([]byte, 1000))
		up2Until(t, "window taken for the DATA", 2*time.Second, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.sendWindow < start })
		resp.Body.Close() // the stream is reset while its DATA waits for the turn
		c.unlockW()
		up2Until(t, "window given back", 2*time.Second, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.sendWindow == start })
	})
}

// TestH2UpResponseHeaderTimeout: the client's own response header
// timeout (h2Transport.headerTimeout, the proxy's
// responseHeaderTimeout), one timer per connection for all its streams.
// A request without a body counts from RoundTrip's start, its waits for
// a stream slot included; one with a body from the body's end, so a
// slow upload is not cut short. Each late request fails with
// errResponseHeaderTimeout (the proxy's 504), close to the timeout.
func TestH2UpResponseHeaderTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	// silent is a transport to an upstream that reads every frame and
	// answers none; its second dial and later ones never end.
	silent := func(t *testing.T, settings ...http2.Setting) *h2Transport {
		up := startUp2Script(t, settings, func(c *up2Raw) error {
			for {
				if _, err := c.ReadFrame(); err != nil {
					return nil
				}
			}
		})
		over := make(chan struct{})
		t.Cleanup(func() { close(over) })
		var dials atomic.Int64
		tr := up2Transport(t, func(ctx context.Context) (net.Conn, error) {
			if dials.Add(1) > 1 {
				<-over
				return nil, errors.New("test over")
			}
			return up.dial(ctx)
		}, time.Minute)
		tr.headerTimeout = timeout
		return tr
	}
	late := func(t *testing.T, tr *h2Transport, req *http.Request, from time.Time) {
		t.Helper()
		_, err := tr.RoundTrip(req)
		took := time.Since(from)
		if !errors.Is(err, errResponseHeaderTimeout) || took < timeout || took > timeout+time.Second {
			t.Errorf("%s %s: %v after %v; want the response header timeout at %v", req.Method, req.URL.Path, err, took, timeout)
		}
	}
	t.Run("every stream of a silent upstream", func(t *testing.T) {
		tr := silent(t)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() { late(t, tr, up2Req(t, "GET", fmt.Sprintf("http://api.test/%d", i), nil), start) })
		}
		wg.Wait()
	})
	t.Run("a wait for a connection counts", func(t *testing.T) {
		tr := silent(t, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
		// An upload that never ends holds the only slot (its head is not
		// due before its body ends); the GET waits for a dial that does
		// not end.
		pr, pw := io.Pipe()
		defer pw.Close()
		go tr.RoundTrip(up2Req(t, "POST", "http://api.test/upload", pr))
		pw.Write([]byte("part"))
		time.Sleep(100 * time.Millisecond) // the upload has the slot
		late(t, tr, up2Req(t, "GET", "http://api.test/queued", nil), time.Now())
	})
	t.Run("from the end of the body", func(t *testing.T) {
		tr := silent(t)
		pr, pw := io.Pipe()
		go func() {
			for range 3 {
				pw.Write([]byte("part"))
				time.Sleep(timeout / 2) // the upload lasts longer than the timeout
			}
			pw.Close()
		}()
		start := time.Now()
		_, err := tr.RoundTrip(up2Req(t, "POST", "http://api.test/upload", pr))
		if took := time.Since(start); !errors.Is(err, errResponseHeaderTimeout) || took < timeout*3/2+timeout {
			t.Errorf("a %v upload to a silent upstream: %v after %v; want the timeout %v after its end", timeout*3/2, err, took, timeout)
		}
	})
	t.Run("from the end of the body read, not sent", func(t *testing.T) {
		// An upstream that gives a stream no window for its body: the
		// body is read whole but never goes out.
		tr := silent(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		start := time.Now()
		_, err := tr.RoundTrip(up2Req(t, "POST", "http://api.test/upload", bytes.NewReader([]byte("sixteen bytes..."))))
		if took := time.Since(start); !errors.Is(err, errResponseHeaderTimeout) || took > timeout+time.Second {
			t.Errorf("an upload the upstream takes none of: %v after %v; want the response header timeout at %v", err, took, timeout)
		}
	})
	t.Run("a slow upload answered is not cut short", func(t *testing.T) {
		up := startUp2(t, &http2.Server{}, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "got %s", b)
		})
		tr := up2Transport(t, up.dial, time.Minute)
		tr.headerTimeout = timeout
		pr, pw := io.Pipe()
		go func() {
			for range 4 {
				pw.Write([]byte("part"))
				time.Sleep(timeout / 2)
			}
			pw.Close()
		}()
		resp := up2RoundTrip(t, tr, up2Req(t, "POST", "http://api.test/upload", pr))
		if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "got partpartpartpart" {
			t.Errorf("answer %q, %v", b, err)
		}
	})
}

// TestH2UpStreamCapWithoutUpstreamLimit: an upstream whose SETTINGS
// name no stream limit gets at most h2StreamsPerConn streams on a
// connection too.
func TestH2UpStreamCapWithoutUpstreamLimit(t *testing.T) {
	up := startUp2Script(t, nil, func(c *up2Raw) error {
		for { // answers nothing
			if _, err := c.ReadFrame(); err != nil {
				return nil
			}
		}
	})
	tr := up2Transport(t, up.dial, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range h2StreamsPerConn + 1 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://api.test/%d", i), nil)
			tr.RoundTrip(req)
		})
	}
	up2Until(t, "a second connection", 3*time.Second, func() bool { return up.dials.Load() == 2 })
	cancel()
	wg.Wait()
}

// TestH2UpStatusLineBeyondTheTable: a final status the table of status
// lines does not hold (600-999) keeps its own code in Status.
func TestH2UpStatusLineBeyondTheTable(t *testing.T) {
	up := startUp2Raw(t, func(c *up2Raw, f *http2.MetaHeadersFrame) error {
		return c.headers(f.StreamID, true, ":status", "700")
	})
	tr := up2Transport(t, up.dial, time.Minute)
	resp := up2RoundTrip(t, tr, up2Req(t, "GET", "http://api.test/", nil))
	resp.Body.Close()
	if resp.StatusCode != 700 || resp.Status != "700 " {
		t.Errorf("StatusCode %d, Status %q; want 700, %q", resp.StatusCode, resp.Status, "700 ")
	}
}
