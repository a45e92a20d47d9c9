package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// TestCaptureRedactsSecrets: the capture of an HTTP/1.1 exchange holds
// neither the Authorization value, nor the cookie, nor an AWS key in the
// body, unless the decision says CaptureSecrets; the rest of the exchange
// is there either way.
func TestCaptureRedactsSecrets(t *testing.T) {
	const token, cookie = "Bearer my-own-token-4711", "session=c00k1e-value"
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("captureSecrets=%v", keep), func(t *testing.T) {
			tca := newTestCA(t, "upstream test CA")
			path := filepath.Join(t.TempDir(), "flows.pcapng")
			w, err := pcap.Create(path, pcap.Options{})
			if err != nil {
				t.Fatal(err)
			}
			dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
				return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows", Capture: true, CaptureSecrets: keep}}
			}}
			h := newHarness(t, tca, dec, func(_ *config.Proxy, d *Deps) { d.Capture = w })
			up := startUpstream(t, tca, false, echoHandler())
			c := h.client(false)
			req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/captured", up.addr.Port()), strings.NewReader(`{"key":"`+awsKeyID+`"}`))
			req.Header.Set("Authorization", token)
			req.Header.Set("Cookie", cookie)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.CloseIdleConnections()
			h.stop()
			settle(w)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(raw, []byte("POST /captured HTTP/1.1")) {
				t.Fatal("the exchange is not in the capture")
			}
			for _, s := range []string{token[len("Bearer "):], "c00k1e-value", awsKeyID} {
				if bytes.Contains(raw, []byte(s)) != keep {
					t.Errorf("capture holds %q: %v, want %v", s, !keep, keep)
				}
			}
		})
	}
}

// settle waits (up to 5s) for w's packet count to stop growing: the
// capture redactor holds the last bytes of each direction back until the
// flow closes, which a connection's handler does after the harness stops.
func settle(w *pcap.Writer) {
	for last, same, i := uint64(0), 0, 0; i < 250 && same < 5; i++ {
		time.Sleep(20 * time.Millisecond)
		if n := w.Stats().Packets; n == last && n > 0 {
			same++
		} else {
			last, same = n, 0
		}
	}
}

// h2Stream is an HTTP/2 client's side of a connection: the preface, its
// SETTINGS, two requests whose header blocks are HPACK-coded with Huffman
// codes and the dynamic table (the second request's credential headers
// are only indices into it), the first padded, with priority and cut
// into a CONTINUATION, and a DATA frame.
func h2Stream(t testing.TB, fields []hpack.HeaderField, body string) []byte {
	var out bytes.Buffer
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	var blk bytes.Buffer
	enc := hpack.NewEncoder(&blk)
	block := func() []byte {
		blk.Reset()
		for _, f := range fields {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		return bytes.Clone(blk.Bytes())
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}))
	b := block()
	must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)/2], PadLength: 7,
		Priority: http2.PriorityParam{StreamDep: 0, Weight: 15}}))
	must(fr.WriteContinuation(1, true, b[len(b)/2:]))
	must(fr.WriteData(1, true, []byte(body)))
	must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(), EndHeaders: true, EndStream: true}))
	return out.Bytes()
}

// TestCaptureRedactsHTTP2Headers: in an HTTP/2 capture, Huffman-coded and
// indexed credential headers and a secret in another header's value come
// out as the marker, decoded by a reader that knows nothing of the
// sender's dynamic table, however the stream is cut; the other headers
// and the frames around are intact, and the body's key is redacted too.
func TestCaptureRedactsHTTP2Headers(t *testing.T) {
	const token = "Bearer my-own-token-4711"
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "api.test"},
		{Name: ":path", Value: "/x?q=" + awsKeyID}, {Name: "authorization", Value: token},
		{Name: "cookie", Value: "session=c00k1e-value"}, {Name: "x-note", Value: "id " + awsKeyID},
		{Name: "user-agent", Value: "curl/8.5.0"},
	}
	want := map[string]string{":path": "/x?q=REDACTEDREDACTEDREDA", "authorization": policy.MarkerOf(len(token)),
		"cookie": policy.MarkerOf(len("session=c00k1e-value")), "x-note": "id REDACTEDREDACTEDREDA", "user-agent": "curl/8.5.0", ":authority": "api.test"}
	in := h2Stream(t, fields, `{"key":"`+awsKeyID+`"}`)
	if bytes.Contains(in, []byte("my-own-token")) {
		t.Fatal("the test stream holds the token literally: not Huffman-coded")
	}
	for _, piece := range []int{1, 5, 9, 64, len(in)} {
		r := newCaptureRedactor(true)
		var out []byte
		for p := in; len(p) > 0; {
			n := min(piece, len(p))
			out = append(out, r.Redact(true, bytes.Clone(p[:n]))...)
			p = p[n:]
		}
		out = append(out, r.Flush(true)...)
		if !bytes.HasPrefix(out, []byte(http2.ClientPreface)) {
			t.Fatalf("pieces of %d: the preface is gone", piece)
		}
		fr := http2.NewFramer(nil, bytes.NewReader(out[len(http2.ClientPreface):]))
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var blocks, data int
		for {
			f, err := fr.ReadFrame()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("pieces of %d: the capture's frames do not read: %v", piece, err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				blocks++
				got := map[string]string{}
				for _, hf := range f.Fields {
					got[hf.Name] = hf.Value
				}
				for k, v := range want {
					if got[k] != v {
						t.Errorf("pieces of %d, block %d: %s is %q, want %q", piece, blocks, k, got[k], v)
					}
				}
				if f.StreamID == 1 && (!f.HasPriority() || f.StreamEnded()) || f.StreamID == 3 && !f.StreamEnded() {
					t.Errorf("pieces of %d: stream %d lost its flags", piece, f.StreamID)
				}
			case *http2.DataFrame:
				data++
				if string(f.Data()) != `{"key":"REDACTEDREDACTEDREDA"}` {
					t.Errorf("pieces of %d: DATA %q", piece, f.Data())
				}
			}
		}
		if blocks != 2 || data != 1 {
			t.Fatalf("pieces of %d: %d header blocks and %d DATA frames, want 2 and 1", piece, blocks, data)
		}
	}
}

// FuzzH2Capture: the HTTP/2 capture rewriter takes any bytes without
// panicking, and what it writes does not depend on how they are cut.
func FuzzH2Capture(f *testing.F) {
	f.Add(h2Stream(f, []hpack.HeaderField{{Name: ":path", Value: "/"}, {Name: "authorization", Value: "Bearer x"}}, "body"), uint16(30))
	f.Add([]byte(http2.ClientPreface+"\x00\x00\x05\x01\x0d\x00\x00\x00\x01\x02\x82\x84\x00\x00"), uint16(26))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint16(3))
	f.Fuzz(func(t *testing.T, in []byte, cut uint16) {
		whole := newH2Capture(true).Write(nil, in)
		n := int(cut) % (len(in) + 1)
		c := newH2Capture(true)
		parts := c.Write(nil, in[:n])
		parts = c.Write(parts, in[n:])
		if !bytes.Equal(whole, parts) {
			t.Fatalf("cut at %d: %q, whole: %q", n, parts, whole)
		}
	})
}
