package mitm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// An HTTP/2 connection with no stream open is parked (h2park.go) and
// woken by its client's next frame. Its state survives: the request
// after each wake refers to the HPACK table entry (x-indexed) the first
// one made, and the upstream gets its value. A PING wakes it too, and
// the requests after are served on the same connection.
func TestH2ParkedConnectionServesLaterRequests(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "transparent", true: "explicit"}[explicit], func(t *testing.T) {
			h, up := h2ParkHarness(t)
			c := dialH2Parked(t, h, context.Background(), up, explicit)
			waitH2Parked(t, h, 1)
			c.wantAnswer("/second", "200 GET /second x-indexed=1")
			waitH2Parked(t, h, 1)
			c.WritePing(false, [8]byte{1, 2, 3})
			if got := c.next(); got != "PING ACK 0102030000000000" {
				t.Fatalf("PING to the parked connection: %s", got)
			}
			waitH2Parked(t, h, 1)
			// Two streams at once after the wake.
			c.headers(c.last+2, true, h2ParkHead("/a")...)
			c.headers(c.last+2, true, h2ParkHead("/b")...)
			got := map[string]bool{}
			for range 2 {
				got[c.answer()] = true
			}
			if !got["200 GET /a x-indexed=1"] || !got["200 GET /b x-indexed=1"] {
				t.Fatalf("two streams after the wake: %v", got)
			}
		})
	}
}

// A parked HTTP/2 connection gets GOAWAY and is closed at the idle
// timeout, counted from its last stream's end (a PING meanwhile does
// not move it, as under x/net's server); its flow finishes (its
// connection slot is free again) when its client closes it, and it is
// closed when the proxy stops.
func TestH2ParkedConnectionCloses(t *testing.T) {
	t.Run("idle timeout", func(t *testing.T) {
		idle := h1ParkAfter + 900*time.Millisecond
		h, up := h2ParkHarness(t, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
		c := dialH2Parked(t, h, context.Background(), up, false)
		start := time.Now()
		waitH2Parked(t, h, 1)
		time.Sleep(300 * time.Millisecond)
		c.WritePing(false, [8]byte{7})
		if got := c.next(); got != "PING ACK 0700000000000000" {
			t.Fatalf("PING to the parked connection: %s", got)
		}
		if got := c.next(); got != "GOAWAY NO_ERROR last 1" {
			t.Fatalf("idle connection: %s, want GOAWAY", got)
		}
		d := time.Since(start)
		if got := c.next(); got != "closed" {
			t.Fatalf("after GOAWAY: %s, want the connection closed", got)
		}
		if d < idle-200*time.Millisecond || d > idle+2*time.Second {
			t.Fatalf("GOAWAY %v after the last stream ended, idle timeout %v", d, idle)
		}
	})
	t.Run("client closes", func(t *testing.T) {
		h, up := h2ParkHarness(t, func(c *config.Proxy, _ *Deps) { c.MaxConnections = 1 })
		c := dialH2Parked(t, h, context.Background(), up, false)
		waitH2Parked(t, h, 1)
		c.nc.Close()
		waitSlotsFree(t, h)
		waitH2Parked(t, h, 0)
	})
	for _, explicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "transparent", true: "explicit"}[explicit]+"/shutdown", func(t *testing.T) {
			h, up := h2ParkHarness(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := dialH2Parked(t, h, ctx, up, explicit)
			waitH2Parked(t, h, 1)
			if explicit {
				h.stop() // ServeExplicit's context
			} else {
				cancel() // Handle's
			}
			// The flow's end closes the socket at once (Proxy.serve):
			// a GOAWAY may or may not come before.
			got := c.next()
			if got == "GOAWAY NO_ERROR last 1" {
				got = c.next()
			}
			if !strings.HasPrefix(got, "closed") {
				t.Fatalf("parked connection at shutdown: %s, want it closed", got)
			}
			waitSlotsFree(t, h)
		})
	}
}

// Parked HTTP/2 connections hold no goroutine each, and each is served
// again after.
func TestH2ParkedConnectionsHoldNoGoroutine(t *testing.T) {
	h, up := h2ParkHarness(t)
	dialH2Parked(t, h, context.Background(), up, false).nc.Close() // warm up the upstream pool
	waitH2Parked(t, h, 0)
	time.Sleep(h1ParkAfter)
	g0 := runtime.NumGoroutine()
	const n = 40
	conns := make([]*h2ParkClient, n)
	for i := range conns {
		conns[i] = dialH2Parked(t, h, context.Background(), up, false)
	}
	waitH2Parked(t, h, n)
	time.Sleep(100 * time.Millisecond)
	if g1 := runtime.NumGoroutine(); g1-g0 > 4 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d parked connections: goroutines %d -> %d, want about the same\n%s", n, g0, g1, buf[:runtime.Stack(buf, true)])
	}
	for i, c := range conns {
		path := fmt.Sprintf("/again/%d", i)
		c.wantAnswer(path, "200 GET "+path+" x-indexed=1")
	}
}

// As the attacker: a client that has begun a frame, or a TLS record,
// when the connection would park does not lose it. The read loop is
// only taken out of its wait between frames, and bytes still in
// crypto/tls wait for the rest of their record. A stream still open
// (a slow upstream) keeps the connection out of the set.
func TestH2NotParkedMidFrame(t *testing.T) {
	t.Run("frame begun", func(t *testing.T) {
		h, up := h2ParkHarness(t)
		c := dialH2Parked(t, h, context.Background(), up, false)
		var frame bytes.Buffer
		fr := http2.NewFramer(&frame, nil)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: c.block(h2ParkHead("/split")...), EndStream: true, EndHeaders: true})
		c.last = 3
		b := frame.Bytes()
		c.nc.Write(b[:5]) // part of the frame header
		time.Sleep(h1ParkAfter + 400*time.Millisecond)
		waitH2Parked(t, h, 0)
		c.nc.Write(b[5:])
		if got := c.answer(); got != "200 GET /split x-indexed=1" {
			t.Fatalf("a frame sent in two parts around the park time: %s", got)
		}
	})
	t.Run("TLS record begun", func(t *testing.T) {
		h, up := h2ParkHarness(t)
		c := dialH2Parked(t, h, context.Background(), up, false)
		w := c.w
		w.holding = true
		c.headers(3, true, h2ParkHead("/record")...)
		if len(w.held) < 20 {
			t.Fatalf("HEADERS record of %d bytes", len(w.held))
		}
		w.send(t, 10) // the record's header and a little
		time.Sleep(h1ParkAfter + 400*time.Millisecond)
		w.holding = false
		w.send(t, len(w.held))
		if got := c.answer(); got != "200 GET /record x-indexed=1" {
			t.Fatalf("a TLS record sent in two parts around the park time: %s", got)
		}
	})
	t.Run("stream open", func(t *testing.T) {
		h, up := h2ParkHarness(t)
		c := dialH2Parked(t, h, context.Background(), up, false)
		c.headers(3, true, h2ParkHead("/slow")...)
		time.Sleep(h1ParkAfter + 300*time.Millisecond)
		if n := h2ParkedCount(h); n != 0 {
			t.Fatalf("%d connections parked while a stream is open", n)
		}
		if got := c.answer(); got != "200 GET /slow x-indexed=1" {
			t.Fatalf("slow answer: %s", got)
		}
	})
}

// h2ParkHarness is a proxy and a TLS upstream answering "METHOD PATH
// x-indexed=VALUE", slowly for /slow, 256 KiB for /big and 40 KiB for
// /mid.
func h2ParkHarness(t *testing.T, opts ...harnessOpt) (*harness, *upstream) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(h1ParkAfter + 600*time.Millisecond)
		case "/big":
			w.Write(make([]byte, 256<<10))
			return
		case "/mid":
			w.Write(make([]byte, 40<<10))
			return
		}
		fmt.Fprintf(w, "%s %s x-indexed=%s", r.Method, r.URL.Path, r.Header.Get("x-indexed"))
	}))
	return newHarness(t, tca, nil, opts...), up
}

// h2ParkClient is a decrypted HTTP/2 client connection to the proxy,
// its frames read by the test, its writes through w.
type h2ParkClient struct {
	*h2sRaw
	w *splitWriter
}

// dialH2Parked is an HTTP/2 client connection to the proxy (transparent
// or inside CONNECT) after one GET: about to be parked.
func dialH2Parked(t *testing.T, h *harness, ctx context.Context, up *upstream, explicit bool) *h2ParkClient {
	t.Helper()
	tc, w := dialProxyTLS(t, h, ctx, up, explicit, "h2")
	c := &h2ParkClient{h2sRaw: h2sRawOn(t, tc), w: w}
	c.nc.SetDeadline(time.Now().Add(15 * time.Second))
	c.handshake()
	c.wantAnswer("/first", "200 GET /first x-indexed=1")
	return c
}

// h2ParkHead is a GET head for https://api.test/path ending in
// x-indexed, which goes into the HPACK table (h2sHead).
func h2ParkHead(path string) []string {
	return h2sHead(":scheme", "https", ":authority", "api.test", ":path", path)
}

// wantAnswer GETs path on the next stream and checks its answer.
func (c *h2ParkClient) wantAnswer(path, want string) {
	c.t.Helper()
	id := c.last + 2
	if c.last == 0 {
		id = 1
	}
	c.headers(id, true, h2ParkHead(path)...)
	if got := c.answer(); got != want {
		c.t.Fatalf("GET %s: %s, want %s", path, got, want)
	}
}

// answer reads frames up to the end of a response: "STATUS BODY"; or
// what else ended the wait (next).
func (c *h2ParkClient) answer() string {
	c.t.Helper()
	status := map[uint32]string{}
	body := map[uint32][]byte{}
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return "closed: " + err.Error()
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			status[f.StreamID] = f.PseudoValue("status")
			if f.StreamEnded() {
				return status[f.StreamID]
			}
		case *http2.DataFrame:
			body[f.StreamID] = append(body[f.StreamID], f.Data()...)
			if f.StreamEnded() {
				return status[f.StreamID] + " " + string(body[f.StreamID])
			}
		case *http2.RSTStreamFrame:
			if f.ErrCode != http2.ErrCodeNo { // NO_ERROR: after an answer, the rest of its request's body is not wanted
				return c.describe(f)
			}
		default:
			if got := c.describe(f); got != "" {
				return got
			}
		}
	}
}

// next reads frames up to one a test waits for: "PING ACK DATA",
// "GOAWAY CODE last ID", "RST_STREAM CODE", or "closed" at the end of
// the connection.
func (c *h2ParkClient) next() string {
	c.t.Helper()
	for {
		f, err := c.ReadFrame()
		if err != nil {
			if err == io.EOF {
				return "closed"
			}
			return "closed: " + err.Error()
		}
		if got := c.describe(f); got != "" {
			return got
		}
	}
}

func (c *h2ParkClient) describe(f http2.Frame) string {
	switch f := f.(type) {
	case *http2.PingFrame:
		if f.IsAck() {
			return fmt.Sprintf("PING ACK %x", f.Data)
		}
	case *http2.GoAwayFrame:
		return fmt.Sprintf("GOAWAY %v last %d", f.ErrCode, f.LastStreamID)
	case *http2.RSTStreamFrame:
		return "RST_STREAM " + f.ErrCode.String()
	case *http2.SettingsFrame:
		if !f.IsAck() {
			c.WriteSettingsAck()
		}
	}
	return ""
}

// h2ParkedCount is the number of HTTP/2 connections in the proxy's
// parkSet.
func h2ParkedCount(h *harness) int {
	s := h.p.h2.parked
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, pc := range s.conns {
		if _, ok := pc.(*h2SrvConn); ok {
			n++
		}
	}
	return n
}

// waitH2Parked waits (5s at most) until n HTTP/2 connections are parked.
func waitH2Parked(t *testing.T, h *harness, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); h2ParkedCount(h) != n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d HTTP/2 connections parked after 5s, want %d", h2ParkedCount(h), n)
		}
	}
}

// waitSlotsFree waits (5s at most) until every connection slot is free:
// the flows finished.
func waitSlotsFree(t *testing.T, h *harness) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n := len(h.p.slots.all)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connection slots still held after 5s", n)
		}
	}
}

// A parked connection lets go of its Framer's read buffer, as large as
// the largest frame the client sent (here 512 KiB of a request body):
// the HPACK decoder, which it keeps, held a slice into it (its last
// block) until drop gave it a block of its own.
func TestH2ParkedConnectionKeepsNoReadBuffer(t *testing.T) {
	h, up := h2ParkHarness(t)
	c := dialH2Parked(t, h, context.Background(), up, false)
	c.headers(3, false, h2sHead(":method", "POST", ":scheme", "https", ":authority", "api.test", ":path", "/up")...)
	c.WriteData(3, true, make([]byte, 512<<10))
	if got := c.answer(); got != "200 POST /up x-indexed=1" {
		t.Fatalf("POST: %s", got)
	}
	c.wantAnswer("/after", "200 GET /after x-indexed=1") // its head is decoded from the large buffer
	waitH2Parked(t, h, 1)
	s := h.p.h2.parked
	s.mu.Lock()
	var held int
	for _, pc := range s.conns {
		if hc, ok := pc.(*h2SrvConn); ok {
			buf := reflect.ValueOf(hc.hdec).Elem().FieldByName("buf")
			if !buf.IsValid() {
				s.mu.Unlock()
				t.Fatal("hpack.Decoder has no field buf: see what h2SrvConn.drop unpins")
			}
			held = buf.Cap()
		}
	}
	s.mu.Unlock()
	if held > 64 {
		t.Fatalf("the parked connection's HPACK decoder holds a slice of %d bytes, want none of the read buffer", held)
	}
	c.wantAnswer("/again", "200 GET /again x-indexed=1")
}

// As the attacker: a client that opens its windows, asks for 16 MiB and
// stops reading leaves the proxy's writes blocked. Its connection is
// never parked meanwhile, and it ends (the stalled writes fail after
// idleTimeout) and its flow finishes. (The rule that keeps a connection
// whose streams are done but whose write is still blocked out of the
// set, canParkLocked, is TestCoalescingQuietWhileWriteBlocked's
// coalescingConn.quiet.)
func TestH2NotParkedWhileWriteBlocked(t *testing.T) {
	idle := 1500 * time.Millisecond
	h, up := h2ParkHarness(t, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	tc, _ := dialProxyTLS(t, h, context.Background(), up, false, "h2")
	c := h2sRawOn(t, tc)
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	c.stall() // windows open, and it never reads again
	for i := range 64 {
		c.headers(uint32(2*i+1), true, h2ParkHead("/big")...)
	}
	start := time.Now()
	for time.Since(start) < idle+closeLinger+3*time.Second {
		if n := h2ParkedCount(h); n != 0 {
			t.Fatalf("parked while its writes were blocked (after %v)", time.Since(start))
		}
		if len(h.p.slots.all) == 0 {
			return // the connection ended and its flow finished
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the connection of a client that reads nothing still open %v after its last request", time.Since(start))
}

// As the attacker: a client that stops reading while its last answer
// is still being written (here 40 KiB through socket buffers of a few
// KiB each way) has no stream open, but its connection's writer is
// blocked. It is not parked: its close, at the idle timeout, would wait
// for that write on the parkSet's goroutine, which every parked
// connection shares (canParkLocked, coalescingConn.quiet).
func TestH2NotParkedWithWriteUnderWay(t *testing.T) {
	h, up := h2ParkHarness(t, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(3 * time.Second) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		sc, err := ln.Accept()
		if err != nil {
			return
		}
		sc.(*net.TCPConn).SetWriteBuffer(4096) // the proxy's side holds little unsent
		h.p.Handle(context.Background(), sc, Destination{Addr: up.addr}, workload.Identity{PID: 7, Comm: "stalled"})
	}()
	// A small receive buffer from the SYN on: the window it advertises
	// can't shrink after.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	raw, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	c := h2sRawOn(t, tls.Client(raw, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{"h2"}}))
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	c.stall() // windows open, and it never reads again
	c.headers(1, true, h2ParkHead("/mid")...)
	for deadline := time.Now().Add(h1ParkAfter + 1500*time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := h2ParkedCount(h); n != 0 {
			t.Fatal("parked while its last answer was still being written")
		}
	}
}

// A connection's requests, one after another, are served by one handler
// goroutine: the goroutine that served a stream waits as a spare for
// the connection's next one, instead of a goroutine (and the growth of
// its stack, growStack) per stream. Spares are let go when the
// connection parks: a parked connection holds none
// (TestH2ParkedConnectionsHoldNoGoroutine).
func TestH2SequentialStreamsShareAHandlerGoroutine(t *testing.T) {
	h, up := h2ParkHarness(t)
	before := spareHandlers(t, 0)
	c := dialH2Parked(t, h, context.Background(), up, false) // its first request
	first := spareHandlers(t, len(before)+1)
	if len(first) != len(before)+1 {
		t.Fatalf("spare handler goroutines %v after the connection's first request, want one more than the %v before", first, before)
	}
	for i := range 50 {
		path := fmt.Sprintf("/seq/%d", i)
		c.wantAnswer(path, "200 GET "+path+" x-indexed=1")
	}
	if last := spareHandlers(t, len(first)); !reflect.DeepEqual(last, first) {
		t.Errorf("spare handler goroutines %v after the first request, %v after 50 more: want the same one serving each", first, last)
	}
	waitH2Parked(t, h, 1)
	if got := spareHandlers(t, len(before)); !reflect.DeepEqual(got, before) {
		t.Errorf("spare handler goroutines %v once the connection parked, want %v (none of its own)", got, before)
	}
	c.wantAnswer("/after", "200 GET /after x-indexed=1") // woken: a new handler serves it
}

// spareHandlers is the IDs of the goroutines waiting in runHandlers for a
// connection's next stream, once there are n of them (1s at most: a
// handler becomes a spare just after its response went out).
func spareHandlers(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(5 * time.Millisecond) {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		ids = ids[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "[chan receive") && strings.Contains(g, "mitm.(*h2SrvConn).runHandlers") {
				ids = append(ids, strings.Fields(g)[1])
			}
		}
		if len(ids) == n || time.Now().After(deadline) {
			return ids
		}
	}
}

// A connection that parks lets go of its HPACK encoder's dynamic table
// (what the responses before indexed: about 0.85 KiB a connection under
// h2load), and tells the client: the first response head after the wake
// empties the client's table (a size update to 0, then back to 4096),
// and a client decoding every head in order reads the same fields
// before and after.
//
// The table keeps the size it had: a client offering 65536 (as browsers
// do) still gets 4096 after the wake, and one offering 0 still gets none
// (an update to 4096 would be a decoding error to it).
func TestH2ParkedConnectionForgetsItsHPACKTable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		offer uint32 // the client's SETTINGS_HEADER_TABLE_SIZE
		want  []byte // what the first head after the wake begins with
	}{
		{"default", 4096, []byte{0x20, 0x3f, 0xe1, 0x1f}},  // 0, then 4096
		{"browser", 65536, []byte{0x20, 0x3f, 0xe1, 0x1f}}, // 0, then 4096 still
		{"no table", 0, []byte{0x20, 0x88}},                // 0 only, then :status 200
	} {
		t.Run(tc.name, func(t *testing.T) { testH2ParkedHPACK(t, tc.offer, tc.want) })
	}
}

func testH2ParkedHPACK(t *testing.T, offer uint32, want []byte) {
	h, up := h2ParkHarness(t)
	tc, w := dialProxyTLS(t, h, context.Background(), up, false, "h2")
	c := &h2ParkClient{h2sRaw: h2sRawOn(t, tc), w: w}
	c.nc.SetDeadline(time.Now().Add(15 * time.Second))
	c.handshake(http2.Setting{ID: http2.SettingHeaderTableSize, Val: offer})
	c.ReadMetaHeaders = nil // the blocks as sent, decoded below in order
	var fields []string
	dec := hpack.NewDecoder(offer, func(f hpack.HeaderField) {
		if f.Name == "content-type" || f.Name == ":status" {
			fields = append(fields, f.Name+": "+f.Value)
		}
	})
	head := func(id uint32, path string) []byte {
		c.headers(id, true, h2ParkHead(path)...)
		var block []byte
		for {
			f, err := c.ReadFrame()
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			if hf, ok := f.(*http2.HeadersFrame); ok {
				block = append([]byte(nil), hf.HeaderBlockFragment()...)
				if _, err := dec.Write(block); err != nil {
					t.Fatalf("GET %s: decoding its head: %v", path, err)
				}
				if err := dec.Close(); err != nil { // the block's end
					t.Fatalf("GET %s: decoding its head: %v", path, err)
				}
			}
			if df, ok := f.(*http2.DataFrame); ok && df.StreamEnded() {
				return block
			}
		}
	}
	head(1, "/one")
	head(3, "/two") // refers to what /one indexed
	waitH2Parked(t, h, 1)
	after := head(5, "/three")
	if !bytes.HasPrefix(after, want) {
		t.Errorf("first head after the wake begins % x, want % x", after[:min(len(after), len(want))], want)
	}
	head(7, "/four")
	wantFields := "[:status: 200 content-type: text/plain; charset=utf-8]"
	for i := range 4 {
		if got := fmt.Sprint(fields[2*i : 2*i+2]); got != wantFields {
			t.Errorf("response %d decoded as %s, want %s", i+1, got, wantFields)
		}
	}
}
