package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// bulkPattern is n bytes that differ from their neighbours, so a byte
// lost, doubled or moved shows.
func bulkPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}

// bulkHandler serves /len/N/... (Content-Length) and /chunked/N/...
// (unknown length) with the first N bytes of body, in writes of an odd size.
func bulkHandler(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /KIND/N/anything
		parts := strings.Split(r.URL.Path, "/")
		if len(parts) < 3 {
			return
		}
		kind := parts[1]
		n, _ := strconv.Atoi(parts[2])
		if kind == "len" {
			w.Header().Set("Content-Length", strconv.Itoa(n))
		}
		for off := 0; off < n; off += 7001 {
			if _, err := w.Write(body[off:min(off+7001, n)]); err != nil {
				return
			}
		}
	})
}

// bulkGet gets path from up through h, over HTTP/2 when h2.
func bulkGet(t *testing.T, h *harness, up *upstream, path string, h2 bool) *http.Response {
	t.Helper()
	resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d%s", up.addr.Port(), path))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
		resp.Body.Close()
		t.Fatalf("the client spoke %s, want HTTP/%d", resp.Proto, want)
	}
	return resp
}

// TestLargeBodyExact: a body long enough to be copied through the large
// buffer (past bulkAfter) reaches the client byte for byte, with its
// framing, over every pair of client and upstream protocols, and the
// record counts exactly what the client got.
func TestLargeBodyExact(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const size = 3<<20 + 12345
	body := bulkPattern(size)
	// The client is offered the upstream's protocol (ALPN), so an HTTP/2
	// client needs an HTTP/2 upstream.
	for _, pair := range []struct{ up, client bool }{{false, false}, {true, false}, {true, true}} {
		up := startUpstream(t, tca, pair.up, bulkHandler(body))
		h := newHarness(t, tca, nil)
		for _, kind := range []string{"len", "chunked"} {
			name := fmt.Sprintf("upstream h2=%v client h2=%v %s", pair.up, pair.client, kind)
			t.Run(name, func(t *testing.T) {
				path := fmt.Sprintf("/%s/%d/%v", kind, size, pair.client)
				resp := bulkGet(t, h, up, path, pair.client)
				got := readAll(t, resp.Body)
				resp.Body.Close()
				if len(got) != size || !bytes.Equal([]byte(got), body) {
					t.Fatalf("got %d bytes (equal: %v), want the %d sent", len(got), bytes.Equal([]byte(got), body), size)
				}
				wantLen := int64(-1)
				if kind == "len" {
					wantLen = size
				}
				if resp.ContentLength != wantLen {
					t.Errorf("Content-Length %d, want %d", resp.ContentLength, wantLen)
				}
				rec := h.recs.wait(t, name, func(r audit.Record) bool { return r.Path == path && r.BytesOut != 0 })
				if rec.BytesOut != size || rec.Status != 200 || rec.End != "" || rec.Decision != "allow" {
					t.Errorf("record bytes_out %d status %d end %q decision %q; want %d 200 allow", rec.BytesOut, rec.Status, rec.End, rec.Decision, size)
				}
			})
		}
	}
}

// TestLargeBodyCut: a response body limit past bulkAfter cuts the body at
// exactly the limit, as the client sees it and as the record counts it.
func TestLargeBodyCut(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const size, limit = 3 << 20, bulkAfter + 100001
	body := bulkPattern(size)
	dec := &fakeDecider{req: func(r *policy.Request) policy.Decision {
		return policy.Decision{Rule: "sizes", MaxResponseBody: limit}
	}}
	h := newHarness(t, tca, dec)
	for _, clientH2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client h2=%v", clientH2), func(t *testing.T) {
			up := startUpstream(t, tca, clientH2, bulkHandler(body))
			path := fmt.Sprintf("/chunked/%d/%v", size, clientH2)
			resp := bulkGet(t, h, up, path, clientH2)
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil || len(got) != limit || !bytes.Equal(got, body[:limit]) {
				t.Fatalf("read %d bytes, %v; want the first %d and an error", len(got), err, limit)
			}
			rec := h.recs.wait(t, "cut", func(r audit.Record) bool { return r.Path == path && r.BytesOut != 0 })
			if rec.Reason != audit.ReasonResponseTooLarge || rec.BytesOut != limit {
				t.Errorf("record reason %q bytes_out %d; want %q %d", rec.Reason, rec.BytesOut, audit.ReasonResponseTooLarge, limit)
			}
		})
	}
}

// TestStalledClientDroppedMidBody: a client that stops reading in the
// middle of a long download is dropped once a write has waited
// IdleTimeout, and a slow one that keeps reading is not (the write
// deadline is pushed out as the body flows, not left at its first
// value), over HTTP/1.1 and HTTP/2.
func TestStalledClientDroppedMidBody(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const size = 256 << 20
	body := bulkPattern(size)
	const idle = 400 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	for _, clientH2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client h2=%v", clientH2), func(t *testing.T) {
			up := startUpstream(t, tca, clientH2, bulkHandler(body))
			path := fmt.Sprintf("/len/%d/%v", size, clientH2)
			resp := bulkGet(t, h, up, path, clientH2)
			defer resp.Body.Close()
			// Read slowly past bulkAfter (each pause shorter than idle: the
			// client is slow, not gone), then stop.
			buf := make([]byte, 256<<10)
			read := 0
			for read < 2*bulkAfter {
				n, err := io.ReadFull(resp.Body, buf)
				read += n
				if err != nil {
					t.Fatalf("after %d bytes: %v", read, err)
				}
				if read%(512<<10) == 0 {
					time.Sleep(idle / 4)
				}
			}
			stalled := time.Now()
			rec := h.recs.wait(t, "stalled client", func(r audit.Record) bool { return r.Path == path })
			took := time.Since(stalled)
			if rec.End != audit.EndClientClosed || rec.BytesOut >= size || rec.BytesOut < int64(read) {
				t.Errorf("record end %q bytes_out %d (client read %d of %d); want %q", rec.End, rec.BytesOut, read, size, audit.EndClientClosed)
			}
			if took > idle+3*time.Second {
				t.Errorf("dropped %s after the client stopped reading; want within %s", took, idle)
			}
		})
	}
}

// TestStalledClientDroppedMidBodyCaptured: the same over HTTP/1.1 with the
// flow captured to pcapng. The capture's tap sits between the client's
// TLS session and its socket; the timed-out connection is still closed
// under TLS (no close_notify into a full socket, which waited 5 s).
func TestStalledClientDroppedMidBodyCaptured(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	w, err := pcap.Create(filepath.Join(t.TempDir(), "f.pcapng"), pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
		return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows", Capture: true, CaptureSecrets: true}}
	}}
	const size = 256 << 20
	body := bulkPattern(size)
	const idle = 400 * time.Millisecond
	h := newHarness(t, tca, dec, func(c *config.Proxy, d *Deps) { c.IdleTimeout = config.Duration(idle); d.Capture = w })
	up := startUpstream(t, tca, false, bulkHandler(body))
	for i := 0; i < 3; i++ { // the 5 s wait came when the socket was full at close: not every time
		path := fmt.Sprintf("/len/%d/cap%d", size, i)
		resp := bulkGet(t, h, up, path, false)
		buf := make([]byte, 256<<10)
		for read := 0; read < 2*bulkAfter; {
			n, err := io.ReadFull(resp.Body, buf)
			read += n
			if err != nil {
				t.Fatal(err)
			}
		}
		stalled := time.Now()
		h.recs.wait(t, "stalled client", func(r audit.Record) bool { return r.Path == path })
		if took := time.Since(stalled); took > idle+3*time.Second {
			t.Errorf("round %d: dropped %s after the client stopped reading; want within %s", i, took, idle)
		}
		resp.Body.Close()
	}
}

// TestH2ClientStoppingItsSocketDropped: an HTTP/2 client that opens its
// flow-control windows wide and then stops reading its socket blocks the
// connection's writes, not its stream's: the connection is closed after
// IdleTimeout without a byte written, and the exchange is recorded then,
// not when the client finally closes (before: never, while it held on).
func TestH2ClientStoppingItsSocketDropped(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	body := bulkPattern(256 << 20)
	const idle = 400 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	up := startUpstream(t, tca, true, bulkHandler(body))
	path := fmt.Sprintf("/len/%d/stall", len(body))
	tc := connectTLSProto(t, h, "api.test", up.addr.Port(), "h2")
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	_ = fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", up.addr.Port())}, {":path", path}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	for { // read up to the first DATA frame, then stop reading
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.(*http2.DataFrame); ok {
			break
		}
	}
	stalled := time.Now()
	rec := h.recs.wait(t, "stalled h2 client", func(r audit.Record) bool { return r.Path == path })
	// crypto/tls's Close may still wait up to 5 s to send close_notify
	// into the full socket (x/net closes the connection it was given).
	if took := time.Since(stalled); took > idle+8*time.Second {
		t.Errorf("recorded %s after the client stopped reading its socket; want within %s (plus crypto/tls's close)", took, idle)
	}
	if rec.BytesOut >= int64(len(body)) {
		t.Errorf("bytes_out %d: the whole body, from a client that stopped reading", rec.BytesOut)
	}
}

// TestQuietStreamSurvives: an event stream whose upstream is quiet for
// longer than IdleTimeout between events, read at once by its client, is
// not a stalled client: every event arrives, over HTTP/1.1 and HTTP/2
// (whose stream deadline is a timer that would fire while the handler
// waits for the upstream).
func TestQuietStreamSurvives(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	const idle = 400 * time.Millisecond
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := 0; i < 3; i++ {
					fmt.Fprintf(w, "data: %d\n\n", i)
					w.(http.Flusher).Flush()
					time.Sleep(3 * idle)
				}
			}))
			path := fmt.Sprintf("/sse/%v", h2)
			resp := bulkGet(t, h, up, path, h2)
			defer resp.Body.Close()
			if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
				t.Errorf("client read %q, %v; want all three events", b, err)
			}
			rec := h.recs.wait(t, "event stream", func(r audit.Record) bool { return r.Path == path })
			if rec.End == audit.EndClientClosed || rec.Error != "" {
				t.Errorf("record end %q error %q: the stream was cut", rec.End, rec.Error)
			}
		})
	}
}
