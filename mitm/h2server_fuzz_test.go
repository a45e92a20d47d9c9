package mitm

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzH2Server feeds the HTTP/2 server arbitrary frames after a valid
// preface and SETTINGS: whatever a client sends, the server neither
// panics nor hangs, and every handler it started returns once the
// client is gone.
func FuzzH2Server(f *testing.F) {
	for _, seed := range h2ServerSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, frames []byte) {
		srv := &h2Server{idleTimeout: time.Second, maxStreams: 4, maxHeaderList: 1 << 10}
		var running atomic.Int32
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			running.Add(1)
			defer running.Add(-1)
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Trailer", "X-Sum")
			_, _ = w.Write([]byte("ok"))
			w.Header().Set("X-Sum", "1")
		})
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.serveConn(context.Background(), server, h, nil)
			close(done)
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.WriteString(client, http2.ClientPreface)
		_ = http2.NewFramer(client, nil).WriteSettings()
		_, _ = client.Write(frames)
		client.Close()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatal("the server still serves 3 s after its client closed")
		}
		for deadline := time.Now().Add(3 * time.Second); running.Load() > 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("a handler still runs 3 s after the connection ended")
			}
		}
	})
}

// h2ServerSeeds are client frames the fuzzer starts from: a GET, a POST
// with a body and trailers, a reset, window updates, a PING, a
// CONTINUATION.
func h2ServerSeeds() [][]byte {
	head := func(enc *hpack.Encoder, buf *bytes.Buffer, fields ...string) []byte {
		buf.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(buf.Bytes())
	}
	var seeds [][]byte
	build := func(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) {
		var out, hb bytes.Buffer
		fr := http2.NewFramer(&out, nil)
		enc := hpack.NewEncoder(&hb)
		write(fr, enc, &hb)
		seeds = append(seeds, out.Bytes())
	}
	get := []string{":method", "GET", ":scheme", "https", ":authority", "api.test", ":path", "/v1?x=1"}
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, get...), EndStream: true, EndHeaders: true})
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		post := append([]string{":method", "POST", ":scheme", "https", ":authority", "api.test", ":path", "/up"}, "content-length", "5", "trailer", "x-t")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, post...), EndHeaders: true})
		_ = fr.WriteData(1, false, []byte("hello"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, "x-t", "v"), EndStream: true, EndHeaders: true})
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, get...), EndHeaders: true})
		_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
		_ = fr.WriteWindowUpdate(0, 1<<20)
		_ = fr.WriteWindowUpdate(3, 1)
		_ = fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		block := head(enc, hb, get...)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3], EndStream: true})
		_ = fr.WriteContinuation(1, true, block[3:])
		_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	return seeds
}
