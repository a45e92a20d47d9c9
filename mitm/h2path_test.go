package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

// hopCases are headers as a client or an upstream may send them.
var hopCases = []http.Header{
	{"User-Agent": {"h2load"}, "Accept": {"*/*"}},
	{"Accept": {"*/*"}}, // no User-Agent
	{"User-Agent": {"a"}, "Connection": {"close, X-Hop"}, "X-Hop": {"1"}},
	{"User-Agent": {"a"}, "Keep-Alive": {"5"}},
	{"User-Agent": {"a"}, "Proxy-Authorization": {"Basic x"}},
	{"User-Agent": {"a"}, "Proxy-Foo": {"y"}},
	{"User-Agent": {"a"}, "Te": {"trailers"}},
	{"User-Agent": {"a"}, "Te": {"gzip"}},
	{"User-Agent": {"a"}, "Expect": {"100-continue"}},
	{"User-Agent": {"a"}, "Trailer": {"X-Sum"}},
	{"User-Agent": {"a"}, "Upgrade": {"websocket"}, "Connection": {"Upgrade"}},
	{"User-Agent": {"a"}, "Transfer-Encoding": {"chunked"}},
	{"User-Agent": {"a"}, "Proxied-By": {"x"}, "Teapot": {"1"}}, // look-alikes stay
}

// transportHeader is the header transportRequest sends for h when it
// edits it: every change spelled out, as before it learned to skip them.
func transportHeader(h http.Header) http.Header {
	out := h.Clone()
	if up := removeHopHeaders(out, true); up != "" {
		out.Set("Connection", "Upgrade")
		out.Set("Upgrade", up)
	}
	out.Del("Expect")
	out.Del("Trailer")
	if _, ok := out["User-Agent"]; !ok {
		out.Set("User-Agent", "")
	}
	return out
}

// TestNeedsHopEdit: a header transportRequest passes on as it is (no
// copy) is one its edits would leave unchanged; and an ordinary one is
// passed on.
func TestNeedsHopEdit(t *testing.T) {
	for _, h := range hopCases {
		if changed := !reflect.DeepEqual(transportHeader(h), h); changed && !needsHopEdit(h) {
			t.Errorf("needsHopEdit(%v) = false, but the edits change it to %v", h, transportHeader(h))
		}
	}
	for _, h := range []http.Header{hopCases[0], hopCases[len(hopCases)-1]} {
		if needsHopEdit(h) {
			t.Errorf("needsHopEdit(%v) = true: an ordinary header is copied", h)
		}
	}
}

// TestTransportRequestSharesOnlyCleanHeaders: the request for an HTTP/2
// pool's Transport carries the client's header map itself only when
// nothing in it is hop-by-hop; otherwise a copy without those fields,
// the client's own left as it was.
func TestTransportRequestSharesOnlyCleanHeaders(t *testing.T) {
	for _, h := range hopCases {
		r, _ := http.NewRequest("GET", "https://api.test/x", nil)
		r.Header = h.Clone()
		x := &Exchange{Req: r, t: &target{host: "api.test", port: 443, useTLS: true}}
		out := x.transportRequest(r.Context(), "api.test", nil)
		if want := transportHeader(h); !reflect.DeepEqual(out.Header, want) {
			t.Errorf("header %v went upstream as %v, want %v", h, out.Header, want)
		}
		if !reflect.DeepEqual(r.Header, h) {
			t.Errorf("the client's header %v was changed to %v", h, r.Header)
		}
		if out.URL == r.URL || out.URL.String() != "https://api.test:443/x" || r.URL.String() != "https://api.test/x" {
			t.Errorf("upstream URL %s, client's %s", out.URL, r.URL)
		}
	}
}

// TestStopChanFirstCauseCounts: an HTTP/2 request cancelled by the
// response header timer answers 504 even when a later cancel (a retry's,
// a body cut) follows; cancelling twice is no panic.
func TestStopChanFirstCauseCounts(t *testing.T) {
	for _, tc := range []struct {
		causes  []error
		timeout bool
	}{
		{[]error{errResponseHeaderTimeout, nil}, true},
		{[]error{&Cut{Reason: "r"}, errResponseHeaderTimeout}, false},
	} {
		s := stopChan{ch: make(chan struct{})}
		for _, c := range tc.causes {
			s.cancel(c)
		}
		select {
		case <-s.ch:
		default:
			t.Fatalf("causes %v: channel still open", tc.causes)
		}
		if s.timedOut.Load() != tc.timeout {
			t.Errorf("causes %v: timedOut %v, want %v", tc.causes, s.timedOut.Load(), tc.timeout)
		}
	}
}

// TestHasHopFieldSkipsOnlyNoOps: a header respond passes on without
// removeHopHeaders (hasHopField false) is one removeHopHeaders would
// leave unchanged; and the ordinary responses are passed on so.
func TestHasHopFieldSkipsOnlyNoOps(t *testing.T) {
	cases := append([]http.Header{
		{"Content-Type": {"text/plain"}, "Content-Length": {"85"}, "Date": {"x"}},
		{"Content-Type": {"text/plain"}, "Connection": {"X-Hop"}, "X-Hop": {"1"}},
		{"Te": {"trailers"}},
		{"Proxy-Authenticate": {"Basic"}},
		{"PROXY-x": {"1"}},
		{"connection": {"close"}}, // not canonical: neither sees it
	}, hopCases...)
	for _, h := range cases {
		edited := h.Clone()
		removeHopHeaders(edited, false)
		if changed := !reflect.DeepEqual(edited, h); changed && !hasHopField(h) {
			t.Errorf("hasHopField(%v) = false, but removeHopHeaders changes it to %v", h, edited)
		}
	}
	for _, h := range []http.Header{cases[0], hopCases[0], hopCases[len(hopCases)-1]} {
		if hasHopField(h) {
			t.Errorf("hasHopField(%v) = true for an ordinary header", h)
		}
	}
}

// TestH2ShortResponseBuffered holds the HTTP/2 server to what
// writesNeedDeadline assumes: a body of h2ShortResponse bytes is written
// by the handler without waiting on the client (it fills the server's
// buffer), so its exchange ends (and is recorded) at once even when the
// client grants no flow-control window; a body one buffer longer waits
// for the window, and is cut at the write deadline (IdleTimeout).
func TestH2ShortResponseBuffered(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 2 * time.Second
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, bulkHandler(bulkPattern(2*h2ShortResponse)))
	for _, tc := range []struct {
		n    int
		wait bool // the handler's writes wait for the window
	}{{h2ShortResponse, false}, {2 * h2ShortResponse, true}} {
		path := fmt.Sprintf("/len/%d/window0", tc.n)
		conn := connectTLSProto(t, h, "api.test", up.addr.Port(), "h2")
		if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		fr := http2.NewFramer(conn, conn)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", up.addr.Port())}, {":path", path}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		go func() { // answer the server's SETTINGS and PINGs; never a WINDOW_UPDATE
			for {
				if _, err := fr.ReadFrame(); err != nil {
					return
				}
			}
		}()
		start := time.Now()
		rec := h.recs.wait(t, "window 0", func(r audit.Record) bool { return r.Path == path })
		took := time.Since(start)
		switch {
		case !tc.wait && (took > idle/2 || rec.BytesOut != int64(tc.n) || rec.End != ""):
			t.Errorf("%d bytes: recorded after %s with %d bytes out, end %q; want at once, all of it", tc.n, took, rec.BytesOut, rec.End)
		case tc.wait && took < idle-200*time.Millisecond:
			t.Errorf("%d bytes: recorded after %s, before the write deadline (%s): the writes did not wait for the window", tc.n, took, idle)
		}
		conn.Close()
	}
}

// h2ReadDeadlineWriter records the read deadlines a body sets through
// its ResponseController.
type h2ReadDeadlineWriter struct {
	http.ResponseWriter
	set []time.Time
}

func (w *h2ReadDeadlineWriter) SetReadDeadline(t time.Time) error {
	w.set = append(w.set, t)
	return nil
}

// TestCountingBodyReadDeadlineBounded: before every read of a request
// body the client has at least idle, and at most idle plus
// deadlineSlack, to send more; a body read in many quick pieces sets a
// deadline about once per deadlineSlack, not once per read.
func TestCountingBodyReadDeadlineBounded(t *testing.T) {
	const idle = time.Second
	const reads = 300
	w := &h2ReadDeadlineWriter{}
	b := &countingBody{r: io.NopCloser(bytes.NewReader(make([]byte, reads))), declared: reads,
		rc: *http.NewResponseController(w), idle: idle}
	p := make([]byte, 1)
	start := time.Now()
	for i := 0; ; i++ {
		before := time.Now()
		n, err := b.Read(p)
		if len(w.set) == 0 {
			t.Fatal("no read deadline set before the first read")
		}
		if dl := w.set[len(w.set)-1]; dl.Sub(before) < idle || dl.Sub(before) > idle+deadlineSlack+50*time.Millisecond {
			t.Fatalf("read %d: deadline %s after the read began, want between %s and %s", i, dl.Sub(before), idle, idle+deadlineSlack)
		}
		if err != nil || n == 0 {
			break
		}
		if i%30 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if b.n.Load() != reads {
		t.Errorf("counted %d bytes, want %d", b.n.Load(), reads)
	}
	if most := int(time.Since(start)/deadlineSlack) + 2; len(w.set) > most {
		t.Errorf("%d read deadlines set for %d reads in %s, want at most %d", len(w.set), reads, time.Since(start), most)
	}
}

// TestH2StalledRequestBodyDropped: an HTTP/2 client that stops sending
// in the middle of a request body has its stream cut after IdleTimeout
// (the body's read deadline), and the exchange is recorded then.
func TestH2StalledRequestBodyDropped(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 400 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	conn := connectTLSProto(t, h, "api.test", up.addr.Port(), "h2")
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", up.addr.Port())}, {":path", "/upload/h2"}, {"content-length", "100000"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	// Some body in quick pieces, then nothing.
	for range 50 {
		_ = fr.WriteData(1, false, make([]byte, 100))
		time.Sleep(time.Millisecond)
	}
	stalled := time.Now()
	reset := make(chan struct{})
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if rs, ok := f.(*http2.RSTStreamFrame); ok && rs.StreamID == 1 {
				close(reset)
				return
			}
			if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == 1 && hf.StreamEnded() {
				close(reset) // answered and ended: the stream is done too
				return
			}
		}
	}()
	rec := h.recs.wait(t, "stalled h2 upload", func(r audit.Record) bool { return r.Path == "/upload/h2" })
	took := time.Since(stalled)
	if took < idle-50*time.Millisecond || took > idle+3*time.Second {
		t.Errorf("recorded %s after the client stalled, want about %s", took, idle)
	}
	if rec.BytesIn != 5000 {
		t.Errorf("bytes_in %d, want the 5000 sent", rec.BytesIn)
	}
	select {
	case <-reset:
	case <-time.After(5 * time.Second):
		t.Error("the stalled stream was neither reset nor answered")
	}
}

// h2WithholdWindow opens an HTTP/2 connection to the proxy whose client
// grants streams a window of window bytes and never more, sends a GET of
// each path, and counts what comes back: RST_STREAM frames, DATA bytes,
// and whether the connection closed.
func h2WithholdWindow(t *testing.T, h *harness, port uint16, window uint32, paths []string) (rst, data, closed *atomic.Int32) {
	t.Helper()
	conn := connectTLSProto(t, h, "api.test", port, "h2")
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window}); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i, p := range paths {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", port)}, {":path", p}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	rst, data, closed = new(atomic.Int32), new(atomic.Int32), new(atomic.Int32)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				closed.Store(1)
				return
			}
			switch f := f.(type) {
			case *http2.DataFrame:
				data.Add(int32(len(f.Data())))
			case *http2.RSTStreamFrame:
				rst.Add(1)
			}
		}
	}()
	return rst, data, closed
}

// A client that grants no window and asks for short answers on many
// streams is cut off after the idle timeout: the server writes a short
// body after the handler returns, and a wait for the window without a
// bound would hold every stream's goroutine and the connection (whose
// idle timeout waits for no stream to be open).
func TestH2WindowWithheldShortAnswersReset(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 300 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, bulkHandler(bulkPattern(16<<10)))
	const streams = 50
	var paths []string
	for i := range streams {
		paths = append(paths, fmt.Sprintf("/len/1000/s%d", i))
	}
	rst, _, closed := h2WithholdWindow(t, h, up.addr.Port(), 0, paths)
	for end := time.Now().Add(20 * idle); rst.Load() < streams && closed.Load() == 0; {
		if time.Now().After(end) {
			t.Fatalf("after %s (idle timeout %s) %d of %d streams reset and the connection open: the client holds them", 20*idle, idle, rst.Load(), streams)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The same for a long answer's last piece: the client's window covers
// all but the tail the server writes after the handler returns.
func TestH2WindowWithheldTailReset(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 300 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	body := bulkPattern(40000)
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "40000")
		w.Write(body[:37000])
		w.(http.Flusher).Flush()
		time.Sleep(100 * time.Millisecond)
		w.Write(body[37000:])
	}))
	rst, data, closed := h2WithholdWindow(t, h, up.addr.Port(), 38000, []string{"/tail"})
	for end := time.Now().Add(20 * idle); rst.Load() == 0 && closed.Load() == 0; {
		if time.Now().After(end) {
			t.Fatalf("after %s (idle timeout %s) the stream is open with %d of 40000 bytes sent: the client holds it", 20*idle, idle, data.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Sluice's own answers are written the same way as the upstream's: a
// client that withholds window from the 403s of denied requests is cut
// off as well (the deadline is armed for every stream's handler, not in
// one of the paths that write a response).
func TestH2WindowWithheldOwnAnswersReset(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 300 * time.Millisecond
	dec := &fakeDecider{req: func(*policy.Request) policy.Decision {
		return policy.Decision{Verdict: policy.Deny, Rule: "test", Reason: "test denies"}
	}}
	h := newHarness(t, tca, dec, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, bulkHandler(bulkPattern(16<<10)))
	const streams = 50
	var paths []string
	for i := range streams {
		paths = append(paths, fmt.Sprintf("/denied/%d", i))
	}
	rst, _, closed := h2WithholdWindow(t, h, up.addr.Port(), 0, paths)
	for end := time.Now().Add(20 * idle); rst.Load() < streams && closed.Load() == 0; {
		if time.Now().After(end) {
			t.Fatalf("after %s (idle timeout %s) %d of %d streams reset and the connection open: the client holds them", 20*idle, idle, rst.Load(), streams)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestH2FullDuplexQuietClient: a full-duplex HTTP/2 call (a gRPC stream,
// a watch) whose client keeps its body open but sends nothing while the
// answer flows is not cut after IdleTimeout of the client's silence:
// IdleTimeout is no traffic either way, and each push of the answer's
// write deadline pushes the body's read deadline too.
func TestH2FullDuplexQuietClient(t *testing.T) {
	const idle = 300 * time.Millisecond
	tca := newTestCA(t, "upstream test CA")
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		go io.Copy(io.Discard, r.Body)
		for i := range 10 { // a message every 100 ms: 3 idle timeouts long
			if _, err := fmt.Fprintf(w, "msg %02d\n", i); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	cc, err := (&http2.Transport{}).NewClientConn(connectTLSProto(t, h, "api.test", up.addr.Port(), "h2"))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/svc/Watch", up.addr.Port()), pr)
	go pw.Write([]byte("watch\n")) // one message, then quiet
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if len(body) != 10*7 || err != nil {
		t.Errorf("status %d, %q, %v; want 10 messages", resp.StatusCode, body, err)
	}
}

// TestH2ExpectOverLimit417: over HTTP/2 as over HTTP/1.1, a body over the
// rule's limit whose client waits for 100 Continue is answered 417 (the
// server sends 100 Continue itself, and keeps the field for the stage).
func TestH2ExpectOverLimit417(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	h := newHarness(t, tca, &fakeDecider{req: func(*policy.Request) policy.Decision {
		return policy.Decision{Rule: "sizes", MaxRequestBody: 10}
	}})
	cc, err := (&http2.Transport{}).NewClientConn(connectTLSProto(t, h, "api.test", up.addr.Port(), "h2"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/up", up.addr.Port()), bytes.NewReader(make([]byte, 20)))
	req.Header.Set("Expect", "100-continue")
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusExpectationFailed {
		t.Errorf("status %d, want 417", resp.StatusCode)
	}
}

// TestH2UnsupportedExpectationForwardedAndRecorded: over HTTP/2 no server
// answers an Expect other than 100-continue on its own (over HTTP/1.1
// net/http's does, 417: TestUnsupportedExpectationRecorded). The request
// goes to its handler, which forwards it without the field (a proxy's
// own to answer, RFC 9110 10.1.1), and it is recorded as any other.
func TestH2UnsupportedExpectationForwardedAndRecorded(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "expect="+r.Header.Get("Expect"))
	}))
	h := newHarness(t, tca, nil)
	cc, err := (&http2.Transport{}).NewClientConn(connectTLSProto(t, h, "api.test", up.addr.Port(), "h2"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/h2-expect", up.addr.Port()), nil)
	req.Header.Set("Expect", "foo")
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "expect=" {
		t.Fatalf("status %d, body %q; want 200 and no Expect upstream", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "/h2-expect", func(r audit.Record) bool { return r.Path == "/h2-expect" })
	if rec.Status != 200 || rec.Proto != "HTTP/2.0" {
		t.Errorf("record %+v", rec)
	}
}
