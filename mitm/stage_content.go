package mitm

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// contentStage applies the rule's content rules (policy.Inspector) to
// what the request carries: header values, the URL's path and query, and
// the body as it streams. A block match answers 400 naming the rule and
// the detector (before anything is sent for headers and URL; by refusing
// the rest of the body for a body); a redact match is overwritten with a
// marker of the same length, so Content-Length and chunk sizes stay
// right; every match's detector goes into the record.
//
// A gzip, deflate, br or zstd body is inspected decompressed and forwarded
// decompressed (without Content-Encoding and Content-Length), up to the
// rule's maxDecompressed; past it, or for another encoding, the rule's
// onUninspectable decides: 400, or the rest passes uninspected.
type contentStage struct{}

func (contentStage) Name() string { return "content" }

// errContentBlocked ends a body a block rule matched.
var errContentBlocked = errors.New("request body matched a content rule")

func (contentStage) Request(x *Exchange) *Answer {
	in := x.Decision.Content
	if in == nil {
		return nil
	}
	r := x.Req
	found := x.findings()
	if in.Inspects(policy.InURL) {
		u := r.URL.EscapedPath()
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		red, fs := in.RedactString(u, policy.InURL)
		if len(fs) > 0 {
			// The record's path never holds what matched, whatever the
			// action.
			p, _ := policy.Redactor().RedactString(r.URL.EscapedPath(), policy.InURL)
			x.Record.Path, _ = in.RedactString(p, policy.InURL)
		}
		if a := found.add(x, fs); a != nil {
			return a
		}
		if red != u {
			path, query, _ := strings.Cut(red, "?")
			if err := setEscapedPath(r, path); err == nil {
				r.URL.RawQuery = query
			}
		}
	}
	if in.Inspects(policy.InHeaders) {
		for _, vs := range r.Header {
			for i, v := range vs {
				red, fs := in.RedactString(v, policy.InHeaders)
				if a := found.add(x, fs); a != nil {
					return a
				}
				vs[i] = red // in place: vs is r.Header[k]
			}
		}
	}
	if !in.Inspects(policy.InBody) || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	enc := strings.ToLower(strings.TrimSpace(headerGet(r.Header, "Content-Encoding")))
	switch enc {
	case "", "identity":
	case "gzip", "x-gzip", "deflate", "br", "zstd":
		// Inspected decompressed and forwarded so: the length is no
		// longer the client's.
		r.Header.Del("Content-Encoding")
		r.Header.Del("Content-Length")
		r.ContentLength = -1
	default:
		if in.BlockUninspectable {
			return uninspectable(x, fmt.Sprintf("request body with Content-Encoding %q cannot be inspected", enc))
		}
		return nil
	}
	x.WrapBody(func(rc io.ReadCloser) io.ReadCloser {
		b := &scanBody{x: x, src: rc, found: found}
		if enc != "" && enc != "identity" {
			b.decode = enc
			b.limit = in.MaxDecompressed
			b.blockOver = in.BlockUninspectable
		}
		b.scan = in.NewBodyScan(func(f policy.Finding) { found.note(f.Detector) })
		return b
	})
	return nil
}

// setEscapedPath sets r's path from its escaped form.
func setEscapedPath(r *http.Request, escaped string) error {
	u := *r.URL
	if err := (&u).UnmarshalBinary([]byte(escaped)); err != nil {
		return err
	}
	r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	return nil
}

// contentAnswer is the 400 for a block match: JSON naming the rule, the
// detector and where it was found, never what matched.
func contentAnswer(x *Exchange, f policy.Finding) *Answer {
	body, _ := json.Marshal(struct {
		Error    string `json:"error"`
		Rule     string `json:"rule"`
		Reason   string `json:"reason"`
		Detector string `json:"detector"`
		In       string `json:"in"`
	}{http.StatusText(http.StatusBadRequest), x.Decision.Rule, audit.ReasonContentBlocked, f.Detector, f.In})
	return &Answer{Status: http.StatusBadRequest, Body: append(body, '\n'), Decision: audit.DecisionDeny, Rule: x.Decision.Rule,
		Reason: audit.ReasonContentBlocked, Detail: fmt.Sprintf("%s in the request %s", f.Detector, f.In), Close: f.In == policy.InBody}
}

func uninspectable(x *Exchange, detail string) *Answer {
	return &Answer{Status: http.StatusBadRequest, Decision: audit.DecisionDeny, Rule: x.Decision.Rule,
		Reason: audit.ReasonUninspectable, Detail: detail, Close: true}
}

// findings collects the detectors a request's content matched, from the
// chain and from the body's reader goroutine, into the record when the
// exchange finishes.
type findings struct {
	mu    sync.Mutex
	names []string
}

// findings returns the exchange's collector, creating it (and its hook
// into the record) on first use.
func (x *Exchange) findings() *findings {
	if x.found == nil {
		f := &findings{}
		x.found = f
		x.OnFinish(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, n := range f.names {
				if !slices.Contains(x.Record.Detectors, n) {
					x.Record.Detectors = append(x.Record.Detectors, n)
				}
			}
		})
	}
	return x.found
}

func (f *findings) note(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.names, name) {
		f.names = append(f.names, name)
	}
}

// add notes fs and returns the answer for a block finding.
func (f *findings) add(x *Exchange, fs []policy.Finding) *Answer {
	for _, v := range fs {
		f.note(v.Detector)
	}
	if len(fs) > 0 && fs[0].Action == policy.ActionBlock {
		return contentAnswer(x, fs[0])
	}
	return nil
}

// scanBody streams a request body through the content scanner: it
// releases what the scanner releases (redacted), refuses the rest on a
// block match, and decompresses a gzip, deflate, br or zstd body first. The client's
// bytes are read by a goroutine of their own (pump), so that when the
// client pauses for bodyIdleFlush with bytes held back, the scanner's
// Flush releases all but those a secret still being written could cover:
// a slow stream (a chunked upload, a streaming POST) reaches the upstream
// as it comes, not once 8KiB gather.
type scanBody struct {
	x     *Exchange
	src   io.ReadCloser
	found *findings
	scan  *policy.BodyScan

	decode    string // "" for none, else gzip, x-gzip, deflate, br or zstd
	release   func() // frees the decoder (zstd) once pump is done with it
	limit     int64  // decompressed bytes to inspect
	blockOver bool   // past limit: refuse (else pass the rest uninspected)
	r         io.Reader
	n         int64 // decompressed bytes read
	passing   bool  // past limit and allowed: no more scanning

	chunks  chan bodyChunk // from pump
	free    chan []byte    // buffers back to pump
	done    chan struct{}  // closed by Close: pump stops
	closing sync.Once
	idle    *time.Timer
	flushed bool // Flush ran since the last chunk: wait for the next

	out  []byte // released bytes not yet returned
	pass []byte // out's storage when passing
	err  error  // the error to return once out is drained
}

// bodyIdleFlush is how long a client may pause, with bytes held back by
// the scanner, before they are released as far as is safe.
const bodyIdleFlush = 50 * time.Millisecond

// bodyChunk is one read of the (decompressed) body; open is set when the
// reader could not be set up.
type bodyChunk struct {
	b    []byte
	err  error
	open bool
}

func (b *scanBody) Read(p []byte) (int, error) {
	for len(b.out) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		b.fill()
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

// pump reads the body into the buffers it is given, until an error or
// Close.
func (b *scanBody) pump() {
	defer func() {
		if b.release != nil {
			b.release()
		}
	}()
	if err := b.open(); err != nil {
		select {
		case b.chunks <- bodyChunk{err: err, open: true}:
		case <-b.done:
		}
		return
	}
	for {
		var buf []byte
		select {
		case buf = <-b.free:
		case <-b.done:
			return
		}
		n, err := b.r.Read(buf)
		select {
		case b.chunks <- bodyChunk{b: buf[:n], err: err}:
		case <-b.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// next is the next chunk, or idle when the client paused with bytes held
// back.
func (b *scanBody) next() (c bodyChunk, idle bool) {
	if b.chunks == nil {
		b.chunks, b.free, b.done = make(chan bodyChunk, 1), make(chan []byte, 2), make(chan struct{})
		b.free <- make([]byte, 32<<10)
		b.free <- make([]byte, 32<<10)
		go b.pump()
	}
	if b.passing || b.flushed || b.scan.Held() == 0 {
		c = <-b.chunks
		b.flushed = false
		return c, false
	}
	if b.idle == nil {
		b.idle = time.NewTimer(bodyIdleFlush)
	} else {
		b.idle.Reset(bodyIdleFlush)
	}
	select {
	case c = <-b.chunks:
		b.idle.Stop()
		return c, false
	case <-b.idle.C:
		b.flushed = true
		return bodyChunk{}, true
	}
}

// fill reads the next piece and scans it, setting out and err.
func (b *scanBody) fill() {
	c, idle := b.next()
	if idle {
		out, f := b.scan.Flush()
		if f != nil {
			b.fail(contentAnswer(b.x, *f), errContentBlocked)
			return
		}
		b.out = out
		return
	}
	if c.open {
		b.fail(uninspectable(b.x, "request body: "+c.err.Error()), c.err)
		return
	}
	if c.b != nil {
		// Every path below copies p (the scanner into its window).
		defer func() { b.free <- c.b[:cap(c.b)] }()
	}
	p, err := c.b, c.err
	n := len(p)
	if b.decode != "" && !b.passing {
		b.n += int64(n)
		if b.n > b.limit {
			if b.blockOver {
				b.fail(uninspectable(b.x, fmt.Sprintf("decompressed request body exceeds the inspection limit of %d bytes", b.limit)), errContentBlocked)
				return
			}
			// Allowed uninspected from here on: release what the scanner
			// holds, then pass the rest.
			keep := int64(n) - (b.n - b.limit)
			out, f := b.scan.Write(p[:keep])
			if f != nil {
				b.fail(contentAnswer(b.x, *f), errContentBlocked)
				return
			}
			out = slices.Clone(out)
			rest, f := b.scan.Close()
			if f != nil {
				b.fail(contentAnswer(b.x, *f), errContentBlocked)
				return
			}
			b.out = slices.Concat(out, rest, p[keep:])
			b.passing = true
			b.err = err
			return
		}
	}
	if b.passing {
		b.pass = append(b.pass[:0], p...)
		b.out, b.err = b.pass, err
		return
	}
	out, f := b.scan.Write(p)
	if f != nil {
		b.fail(contentAnswer(b.x, *f), errContentBlocked)
		return
	}
	b.out = out
	switch {
	case err == io.EOF:
		out = slices.Clone(out)
		rest, f := b.scan.Close()
		if f != nil {
			b.fail(contentAnswer(b.x, *f), errContentBlocked)
			return
		}
		b.out = append(out, rest...)
		b.err = io.EOF
	case err != nil && b.decode != "" && !errors.Is(err, errRequestBodyTooLarge):
		b.fail(uninspectable(b.x, "decompress request body: "+err.Error()), err)
	case err != nil:
		b.err = err
	}
}

// open sets up the reader: the client's body, or its decompression.
func (b *scanBody) open() error {
	switch b.decode {
	case "":
		b.r = b.src
	case "gzip", "x-gzip":
		z, err := gzip.NewReader(b.src)
		if err != nil {
			return fmt.Errorf("gzip header: %w", err)
		}
		b.r = z
	case "deflate":
		// RFC 9110 deflate is zlib; some clients send raw deflate.
		br := bufio.NewReader(b.src)
		h, _ := br.Peek(2)
		if len(h) == 2 && h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			z, err := zlib.NewReader(br)
			if err != nil {
				return fmt.Errorf("zlib header: %w", err)
			}
			b.r = z
		} else {
			b.r = flate.NewReader(br)
		}
	case "br":
		b.r = brotli.NewReader(b.src)
	case "zstd":
		// A window past 8MiB (zstd's own cap for HTTP, RFC 8878 §3.1.1.1.2)
		// is refused rather than allocated for.
		z, err := zstd.NewReader(b.src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(8<<20),
			zstd.WithDecoderLowmem(true))
		if err != nil {
			return fmt.Errorf("zstd decoder: %w", err)
		}
		b.r, b.release = z, z.Close
	}
	return nil
}

// fail refuses the rest of the body with a.
func (b *scanBody) fail(a *Answer, err error) {
	b.x.AbortBody(a)
	b.out, b.err = nil, err
}

// Close stops pump and closes the client's body; while pump may be in a
// read of it, which holds an HTTP/1 body's lock until the client sends
// more, the body is closed from a goroutine of its own.
func (b *scanBody) Close() error {
	if b.done == nil {
		return b.src.Close()
	}
	b.closing.Do(func() {
		close(b.done)
		go b.src.Close()
	})
	return nil
}

var _ Stage = contentStage{}
