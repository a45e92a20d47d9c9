package mitm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// Fixed reasons of answers Sluice gives itself; tests and logs assert on
// them. The detail goes to the record's Error and the answer's body.
const (
	reasonUnreachable     = "upstream unreachable"
	reasonVerify          = "upstream certificate verification failed"
	reasonUpstreamTLS     = "upstream TLS handshake failed"
	reasonTimeout         = "upstream response header timeout"
	reasonUpstreamError   = "upstream error"
	reasonHeaderTooLarge  = "request header fields too large"
	reasonMalformed       = "malformed request"
	reasonSmuggling       = "both Content-Length and Transfer-Encoding"
	reasonReqTooLarge     = "request body exceeds limit"
	reasonRespTooLarge    = "response body exceeds limit"
	reasonClientGone      = "client gone"
	reasonNotProxy        = "not a proxy request"
	reasonBadHello        = "malformed client hello"
	reasonClientHandshake = "client TLS handshake failed"
	reasonClientSilent    = "client sent nothing"
	reasonTooMany         = "too many connections"
	reasonMisdirected     = "request host differs from the connection's host"
	reasonSNIMismatch     = "SNI differs from the CONNECT host"
	// reasonPassthroughUnbound: a pass-through SNI that does not resolve to
	// the destination address is decrypted instead.
	reasonPassthroughUnbound = "pass-through SNI does not resolve to the destination; decrypted"

	sourceSluice   = "sluice"
	sourceUpstream = "upstream"
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

var (
	errResponseHeaderTimeout = errors.New("upstream response header timeout")
	errRequestBodyTooLarge   = errors.New("request body exceeds limit")
)

// httpRecord starts the record of one request on this flow.
func (f *flow) httpRecord() *audit.Record {
	return f.record(audit.KindHTTP, time.Now())
}

// exchange is one request being served.
type exchange struct {
	f     *flow
	w     http.ResponseWriter
	r     *http.Request
	rec   *audit.Record
	start time.Time
	d     policy.Decision
	body  *countingBody
	ht    headerTimer // forward's response header timer, allocated with x
}

// ServeHTTP serves one request of the flow: decide, forward, stream back,
// record.
func (f *flow) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{f: f, w: w, r: r, rec: f.httpRecord(), start: time.Now()}
	rec := x.rec
	rec.Time = x.start
	rec.Proto = r.Proto
	rec.Method = r.Method
	rec.Path = r.URL.EscapedPath()
	if f.p.deps.LogHeaders {
		rec.Header = audit.Redact(r.Header, f.p.deps.RedactHeaders)
	}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				panic(v)
			}
			f.p.log.Error("panic serving request", "panic", fmt.Sprint(v), "method", r.Method, "host", rec.Host)
			panic(http.ErrAbortHandler)
		}
	}()

	if f.h1 != nil {
		if h, ok := f.h1.nextHead(); ok {
			if h.size > f.p.cfg.MaxHeaderBytes {
				x.fail(http.StatusRequestHeaderFieldsTooLarge, audit.DecisionError, reasonHeaderTooLarge,
					fmt.Sprintf("request header block of %d bytes exceeds %d", h.size, f.p.cfg.MaxHeaderBytes), nil)
				return
			}
			if h.both {
				w.Header().Set("Connection", "close")
				x.fail(http.StatusBadRequest, audit.DecisionError, reasonSmuggling,
					"request has both Content-Length and Transfer-Encoding", nil)
				return
			}
		}
	}

	if r.ProtoMajor == 2 {
		// The HTTP/2 server's own limit (twice ours) answers 431 without
		// a handler; up to it, this check answers and records.
		if n := h2HeaderSize(r); n > f.p.cfg.MaxHeaderBytes {
			x.fail(http.StatusRequestHeaderFieldsTooLarge, audit.DecisionError, reasonHeaderTooLarge,
				fmt.Sprintf("request header list of %d bytes exceeds %d", n, f.p.cfg.MaxHeaderBytes), nil)
			return
		}
	}

	if f.explicit && r.Method == http.MethodConnect {
		f.p.serveConnect(w, r, f)
		return
	}
	host, port := f.requestHost(r)
	if f.explicit && f.fixed == nil && (r.URL.Scheme != "http" || r.URL.Host == "") {
		x.fail(http.StatusBadRequest, audit.DecisionError, reasonNotProxy,
			"the explicit proxy takes CONNECT or absolute-form http:// requests", nil)
		return
	}
	rec.Host = host
	t := f.targetFor(r, host, port)
	rec.Port = t.port // the port dialed, whatever the Host header says
	if t.unbound {
		rec.Error = fmt.Sprintf("host %q does not resolve to the destination %s: judged by the address", host, f.dst.Addr.Addr())
	}
	if f.fixed != nil && t.conn.Host != "" && !t.connHostIsIP() && !sameHost(host, t.conn.Host) {
		// The connection was opened (and verified upstream) for that
		// name; a request naming another host would be judged by a name
		// it is not going to (domain fronting). Without SNI the policy
		// judges the address, whatever the Host header says.
		x.fail(http.StatusMisdirectedRequest, audit.DecisionDeny, reasonMisdirected,
			fmt.Sprintf("request host %q is not %q, the host this connection was opened for (TLS SNI or CONNECT target)", host, t.conn.Host), nil)
		return
	}
	if t.cd.Action == policy.Reject {
		d := t.cd.Decision
		d.Verdict = policy.Deny
		x.d = d
		x.deny(d)
		return
	}
	d := f.p.decider().Request(r.Context(), &policy.Request{
		Conn:          t.conn,
		Method:        r.Method,
		Host:          t.conn.Host, // the name bound to what is dialed (see flow.target)
		Path:          r.URL.EscapedPath(),
		Header:        r.Header,
		ContentLength: r.ContentLength,
	})
	x.d = d
	rec.Decision, rec.Rule, rec.Reason = decisionString(d), d.Rule, d.Reason
	if d.Denied() {
		x.deny(d)
		return
	}
	if d.MaxRequestBody > 0 && r.ContentLength > d.MaxRequestBody {
		code := http.StatusRequestEntityTooLarge
		if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
			code = http.StatusExpectationFailed
		}
		w.Header().Set("Connection", "close")
		x.fail(code, audit.DecisionDeny, reasonReqTooLarge,
			fmt.Sprintf("request body of %d bytes exceeds the limit of %d", r.ContentLength, d.MaxRequestBody), d.Header)
		return
	}
	if t.addr.IsValid() {
		rec.DstIP = t.addr.Addr()
		rec.UpstreamAddr = t.addrString(t.addr)
	}
	if t.err != nil {
		x.fail(http.StatusBadGateway, audit.DecisionError, t.fail, t.err.Error(), d.Header)
		return
	}
	if !t.useTLS {
		if err := t.ensure(f); err != nil {
			x.fail(http.StatusBadGateway, audit.DecisionError, t.fail, err.Error(), d.Header)
			return
		}
	}
	rec.DstIP = t.addr.Addr()
	rec.UpstreamAddr = t.addrString(t.addr)
	x.forward(t)
}

// memo is a value computed from a key, kept for as long as the key stays
// the same (see target.addrString and target.connHostIsIP).
type memo[K comparable, V any] struct {
	k K
	v V
}

// addrString is a.String(), remembered per target: a request of a
// keep-alive connection need not format its upstream address anew.
func (t *target) addrString(a netip.AddrPort) string {
	if m := t.addrStr.Load(); m != nil && m.k == a {
		return m.v
	}
	s := a.String()
	t.addrStr.Store(&memo[netip.AddrPort, string]{a, s})
	return s
}

// connHostIsIP is isIPLiteral(t.conn.Host), remembered per target.
func (t *target) connHostIsIP() bool {
	h := t.conn.Host
	if m := t.hostIP.Load(); m != nil && m.k == h {
		return m.v
	}
	ip := isIPLiteral(h)
	t.hostIP.Store(&memo[string, bool]{h, ip})
	return ip
}

// h2HeaderSize is the header list size as HTTP/2 counts it (RFC 9113
// 6.5.2: name and value lengths plus 32 per field, pseudo-headers too).
func h2HeaderSize(r *http.Request) int {
	n := len(":method") + len(r.Method) + len(":path") + len(r.URL.RequestURI()) +
		len(":authority") + len(r.Host) + len(":scheme") + len("https") + 4*32
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 32
		}
	}
	return n
}

// requestHost is the request's host without port, and the port when the
// request names one.
func (f *flow) requestHost(r *http.Request) (string, uint16) {
	h := r.Host
	if f.explicit && f.fixed == nil && r.URL.Host != "" {
		h = r.URL.Host
	}
	host, port := splitHostPort(h)
	if f.explicit && f.fixed == nil && port == 0 {
		port = 80
	}
	return host, port
}

// sameHost compares a request's host with a connection's: case-insensitive,
// without a trailing dot or IPv6 brackets. An empty request host (HTTP/1.0
// without Host) is the connection's.
func sameHost(req, conn string) bool {
	norm := func(h string) string { return strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".") }
	return req == "" || norm(req) == norm(conn)
}

func splitHostPort(h string) (string, uint16) {
	if host, p, err := net.SplitHostPort(h); err == nil {
		// Fast path for the usual all-digit port; anything else keeps
		// fmt's scanning rules.
		if n, err := strconv.ParseUint(p, 10, 16); err == nil {
			return strings.ToLower(host), uint16(n)
		}
		var n uint16
		if _, err := fmt.Sscanf(p, "%d", &n); err == nil {
			return strings.ToLower(host), n
		}
		return strings.ToLower(host), 0
	}
	return strings.ToLower(strings.Trim(h, "[]")), 0
}

// targetFor picks the destination; in explicit mode the URL's port counts.
func (f *flow) targetFor(r *http.Request, host string, port uint16) *target {
	if f.fixed != nil {
		return f.fixed
	}
	if f.explicit {
		key := net.JoinHostPort(host, fmt.Sprint(port))
		f.mu.Lock()
		t, ok := f.targets[key]
		f.mu.Unlock()
		if ok {
			return t
		}
		t = f.newTarget(host, port, false)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.targets == nil {
			f.targets = map[string]*target{}
		}
		if len(f.targets) < 16 {
			f.targets[key] = t
		}
		return t
	}
	return f.target(r, host)
}

// deny writes the policy's deny answer.
func (x *exchange) deny(d policy.Decision) {
	rec := x.rec
	rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, d.Rule, d.Reason
	h := x.w.Header()
	for k, vs := range d.Header {
		h[k] = append(h[k], vs...)
	}
	h.Set("Content-Type", "application/json")
	body := d.DenyBody()
	x.w.WriteHeader(d.StatusCode())
	n, _ := x.w.Write(body)
	rec.Status, rec.Source, rec.BytesOut = d.StatusCode(), sourceSluice, int64(n)
	x.finish()
}

// fail answers with a JSON error Sluice produced itself.
func (x *exchange) fail(code int, decision, reason, detail string, extra http.Header) {
	rec := x.rec
	rec.Decision, rec.Reason, rec.Error = decision, reason, detail
	if x.d.Rule != "" {
		rec.Rule = x.d.Rule
	}
	h := x.w.Header()
	for k, vs := range extra {
		h[k] = append(h[k], vs...)
	}
	h.Set("Content-Type", "application/json")
	body := errorBody(code, rec.Rule, detail)
	x.w.WriteHeader(code)
	n, _ := x.w.Write(body)
	rec.Status, rec.Source, rec.BytesOut = code, sourceSluice, int64(n)
	x.finish()
}

func errorBody(code int, rule, reason string) []byte {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Rule   string `json:"rule,omitempty"`
		Reason string `json:"reason"`
	}{http.StatusText(code), rule, reason})
	return append(b, '\n')
}

func (x *exchange) finish() {
	if x.body != nil {
		x.rec.BytesIn = x.body.n.Load()
	}
	x.rec.Duration = time.Since(x.start)
	x.f.p.emit(x.rec)
}

// countingBody counts (and optionally limits) the request body. The
// transport may still read it after RoundTrip returns, hence atomics.
type countingBody struct {
	r        io.ReadCloser
	n        atomic.Int64
	limit    int64
	exceeded atomic.Bool
	onEOF    func() // called when the body has been read to its end
	declared int64  // Content-Length, -1 when unknown
	// idle, when set, is called before every read to push the client's
	// read deadline out: a client that stalls mid-body is dropped after
	// IdleTimeout instead of holding its slot and an upstream connection.
	idle func()
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.exceeded.Load() {
		return 0, errRequestBodyTooLarge
	}
	if b.idle != nil {
		b.idle()
	}
	n, err := b.r.Read(p)
	total := b.n.Add(int64(n))
	if b.limit > 0 && total > b.limit {
		b.exceeded.Store(true)
		return 0, errRequestBodyTooLarge
	}
	if (err == io.EOF || (b.declared > 0 && total >= b.declared)) && b.onEOF != nil {
		b.onEOF()
	}
	return n, err
}

func (b *countingBody) Close() error { return b.r.Close() }

// forward sends the request upstream and streams the answer back.
func (x *exchange) forward(t *target) {
	f, r, w, rec, d := x.f, x.r, x.w, x.rec, x.d
	p := f.p
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)

	out := r.WithContext(ctx) // shallow; the header is cloned below
	u := *r.URL
	out.URL = &u
	out.RequestURI = ""
	out.URL.Scheme = "http"
	if t.useTLS {
		out.URL.Scheme = "https"
	}
	out.URL.Host = t.urlHost()
	out.Host = r.Host
	if f.explicit && f.fixed == nil {
		out.Host = r.URL.Host
	}
	out.Close = false
	out.Header = r.Header.Clone()
	upgrade := removeHopHeaders(out.Header, true)
	if upgrade != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	out.Header.Del("Expect")
	out.Header.Del("Trailer")
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // no Go default User-Agent
	}
	rc := http.NewResponseController(w)
	if r.ProtoMajor == 1 {
		// The upstream may answer while the body is still coming.
		_ = rc.EnableFullDuplex()
	}
	// A body is forwarded unless there is none: an HTTP/2 request without
	// one comes with a non-nil Body of length 0, which must not wait for
	// an end that the upstream request never reads.
	var body *countingBody
	out.Body = nil
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		body = &countingBody{r: r.Body, limit: d.MaxRequestBody, declared: r.ContentLength}
		idle := p.cfg.IdleTimeout.D()
		body.idle = func() { _ = rc.SetReadDeadline(time.Now().Add(idle)) }
		out.Body = body
	}
	out.Trailer = r.Trailer

	// ResponseHeaderTimeout counts from the end of the request body, as
	// net/http's Transport does, so a long upload is not cut short.
	ht := &x.ht
	ht.d, ht.fire = p.cfg.ResponseHeaderTimeout.D(), func() { cancel(errResponseHeaderTimeout) }
	if body != nil {
		body.onEOF = ht.arm
	} else {
		ht.arm()
	}
	upStart := time.Now()
	resp, err := t.pool.rt.RoundTrip(out)
	ht.stop()
	rec.UpstreamDuration = time.Since(upStart)
	x.body = body
	if err != nil {
		switch {
		case body != nil && body.exceeded.Load():
			w.Header().Set("Connection", "close")
			x.fail(http.StatusRequestEntityTooLarge, audit.DecisionDeny, reasonReqTooLarge,
				fmt.Sprintf("request body exceeds the limit of %d bytes", d.MaxRequestBody), d.Header)
		case errors.Is(context.Cause(ctx), errResponseHeaderTimeout):
			x.fail(http.StatusGatewayTimeout, audit.DecisionError, reasonTimeout,
				fmt.Sprintf("upstream %s sent no response headers within %s", hostOr(t.host, t.conn.Addrs), p.cfg.ResponseHeaderTimeout.D()), d.Header)
		case r.Context().Err() != nil:
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, reasonClientGone, "client went away before the response: "+err.Error()
			x.finish()
		default:
			reason, detail := reasonUpstreamError, fmt.Sprintf("upstream %s: %v", hostOr(t.host, t.conn.Addrs), err)
			var de *dialError
			var ne net.Error
			switch {
			case errors.As(err, &de):
				reason, detail = de.reason, de.Error()
			case errors.As(err, &ne) && ne.Timeout():
				reason = reasonUnreachable
			}
			x.fail(http.StatusBadGateway, audit.DecisionError, reason, detail, d.Header)
		}
		return
	}
	defer resp.Body.Close()
	rec.Status, rec.Source = resp.StatusCode, sourceUpstream

	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.upgrade(resp, d)
		return
	}
	if d.MaxResponseBody > 0 && resp.ContentLength > d.MaxResponseBody {
		x.fail(http.StatusBadGateway, audit.DecisionDeny, reasonRespTooLarge,
			fmt.Sprintf("response body of %d bytes exceeds the limit of %d", resp.ContentLength, d.MaxResponseBody), d.Header)
		return
	}

	h := w.Header()
	removeHopHeaders(resp.Header, false)
	resp.Header.Del("Trailer")
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for k, vs := range d.Header {
		h[k] = append(h[k], vs...)
	}
	if resp.ContentLength >= 0 && r.Method != http.MethodHead {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	// A body of unknown length may be a stream (SSE, chunked): every
	// piece goes out as soon as the upstream sends it, headers first. A
	// body of known length is written through net/http's small buffer,
	// which goes out as it fills and when the handler returns.
	streaming := resp.ContentLength < 0
	if streaming {
		_ = rc.Flush()
	}

	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var written int64
	cut, clientGone, complete := false, false, false
	var upErr error
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if d.MaxResponseBody > 0 && written+int64(n) > d.MaxResponseBody {
				chunk = chunk[:d.MaxResponseBody-written]
				cut = true
			}
			// A client that stops reading is dropped after IdleTimeout.
			_ = rc.SetWriteDeadline(time.Now().Add(p.cfg.IdleTimeout.D()))
			m, werr := w.Write(chunk)
			written += int64(m)
			if werr == nil && streaming {
				werr = rc.Flush()
			}
			if werr != nil {
				clientGone = true
				upErr = werr
				break
			}
			if cut {
				break
			}
		}
		if err == io.EOF {
			complete = true
			break
		}
		if err != nil {
			upErr = err
			break
		}
	}
	rec.BytesOut = written
	switch {
	case cut:
		rec.Decision, rec.Reason = audit.DecisionDeny, reasonRespTooLarge
		rec.Error = fmt.Sprintf("response cut at the limit of %d bytes", d.MaxResponseBody)
		x.finish()
		cancel(errors.New("response cut"))
		panic(http.ErrAbortHandler)
	// A client that closes as soon as it has the whole body (HTTP/1.1 with
	// Content-Length) cancels the request context; that is no failure.
	case clientGone || !complete && r.Context().Err() != nil:
		rec.Decision, rec.Reason = audit.DecisionError, reasonClientGone
		rec.Error = fmt.Sprintf("client went away mid-response: %v", upErr)
		if upErr == nil {
			rec.Error = "client went away mid-response"
		}
		x.finish()
		return
	case upErr != nil:
		rec.Decision, rec.Reason = audit.DecisionError, reasonUpstreamError
		rec.Error = fmt.Sprintf("upstream body: %v", upErr)
		x.finish()
		panic(http.ErrAbortHandler)
	}
	for k, vs := range resp.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
	x.finish()
}

// headerTimer fires once, d after arm, unless stop came first.
type headerTimer struct {
	d    time.Duration
	fire func()

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func (h *headerTimer) arm() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopped && h.t == nil {
		h.t = time.AfterFunc(h.d, h.fire)
	}
}

func (h *headerTimer) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.t != nil {
		h.t.Stop()
	}
}

// urlHost is poolURLHost(t), remembered per target for as long as its
// host, address and port stay the same.
func (t *target) urlHost() string {
	k := urlHostKey{t.host, t.addr, t.port}
	if m := t.urlHostMemo.Load(); m != nil && m.k == k {
		return m.v
	}
	h := poolURLHost(t)
	t.urlHostMemo.Store(&memo[urlHostKey, string]{k, h})
	return h
}

type urlHostKey struct {
	host string
	addr netip.AddrPort
	port uint16
}

func poolURLHost(t *target) string {
	h := t.host
	if h == "" && t.addr.IsValid() {
		h = t.addr.Addr().String()
	}
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(int(t.port))
}

// upgrade completes a protocol switch (WebSocket): the 101 goes to the
// client, then bytes are copied both ways until either side closes.
func (x *exchange) upgrade(resp *http.Response, d policy.Decision) {
	rec := x.rec
	upConn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		x.fail(http.StatusBadGateway, audit.DecisionError, reasonUpstreamError, "upstream switched protocols without a bidirectional body", nil)
		return
	}
	defer upConn.Close()
	if x.r.ProtoMajor != 1 {
		x.fail(http.StatusBadGateway, audit.DecisionError, reasonUpstreamError, "protocol switch over HTTP/2 is not supported", nil)
		return
	}
	clientConn, brw, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		x.fail(http.StatusInternalServerError, audit.DecisionError, reasonUpstreamError, "hijack client connection: "+err.Error(), nil)
		return
	}
	defer clientConn.Close()
	_ = clientConn.SetDeadline(time.Time{})
	hdr := resp.Header.Clone()
	for k, vs := range d.Header {
		hdr[k] = append(hdr[k], vs...)
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(101))
	_ = hdr.Write(brw)
	_, _ = brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		rec.Error = "write 101 to client: " + err.Error()
		x.finish()
		return
	}
	var clientSide io.Reader = clientConn
	if n := brw.Reader.Buffered(); n > 0 {
		clientSide = io.MultiReader(io.LimitReader(brw.Reader, int64(n)), clientConn)
	}
	in, out, err := pipe(x.f.ctx, clientSide, clientConn, upConn)
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	x.finish()
}

// hopHeaders are the RFC 9110 7.6.1 connection-specific fields and the
// proxy-only ones; Connection-listed names are removed too. They are
// spelled canonically (removeHopHeaders deletes them from the map as
// they are).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders strips hop-by-hop fields from h. TE is kept when it
// says "trailers". When keepWS is set and the message asks for a
// WebSocket upgrade, the Upgrade value is returned for the caller to
// re-add.
func removeHopHeaders(h http.Header, keepWS bool) (upgrade string) {
	if keepWS && strings.EqualFold(h.Get("Upgrade"), "websocket") && headerHasToken(h, "Connection", "upgrade") {
		upgrade = h.Get("Upgrade")
	}
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	te := headerHasToken(h, "Te", "trailers")
	for _, k := range hopHeaders {
		delete(h, k) // h.Del(k) without canonicalizing: k is canonical
	}
	if te {
		h.Set("Te", "trailers")
	}
	for k := range h {
		if hasProxyPrefix(k) {
			delete(h, k)
		}
	}
	return upgrade
}

// hasProxyPrefix reports whether strings.ToLower(k) starts with "proxy-"
// without allocating: only ASCII letters lower-case into that prefix.
func hasProxyPrefix(k string) bool {
	const prefix = "proxy-"
	if len(k) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := k[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			t, _, _ = strings.Cut(t, ";")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// clientCaused are error reasons that say the client misbehaved or left.
var clientCaused = map[string]bool{
	reasonClientGone: true, reasonMalformed: true, reasonHeaderTooLarge: true,
	reasonSmuggling: true, reasonNotProxy: true, reasonBadHello: true,
	reasonClientHandshake: true, reasonClientSilent: true,
}

// emit hands a record to the audit sink and writes the canonical log line:
// allow at Info, deny at Warn, errors at Error.
func (p *Proxy) emit(rec *audit.Record) {
	if rec.Duration == 0 {
		rec.Duration = time.Since(rec.Time)
	}
	p.deps.Audit.Record(rec)
	level := slog.LevelInfo
	switch rec.Decision {
	case audit.DecisionDeny, audit.DecisionWouldDeny:
		level = slog.LevelWarn
	case audit.DecisionError:
		level = slog.LevelError
		if clientCaused[rec.Reason] {
			level = slog.LevelWarn // the client's doing, not an internal failure
		}
	}
	if !p.log.Enabled(context.Background(), level) {
		return
	}
	// Room for every attribute on the stack: no growing, no closure.
	var buf [maxDecisionAttrs]slog.Attr
	attrs := append(buf[:0],
		slog.String("kind", rec.Kind),
		slog.String("workload", rec.Workload.Name()),
		slog.String("decision", rec.Decision),
	)
	if rec.Workload.Client.IsValid() {
		attrs = append(attrs, slog.String("client", rec.Workload.Client.String()))
	}
	attrs = appendNonEmpty(attrs, "host", rec.Host)
	if rec.DstIP.IsValid() {
		attrs = append(attrs, slog.String("ip", rec.DstIP.String()))
	}
	if rec.Port != 0 {
		attrs = append(attrs, slog.Int("port", int(rec.Port)))
	}
	attrs = appendNonEmpty(attrs, "sni", rec.SNI)
	attrs = appendNonEmpty(attrs, "tls", rec.TLS)
	attrs = appendNonEmpty(attrs, "method", rec.Method)
	attrs = appendNonEmpty(attrs, "path", rec.Path)
	if rec.Status != 0 {
		attrs = append(attrs, slog.Int("status", rec.Status))
	}
	attrs = appendNonEmpty(attrs, "rule", rec.Rule)
	attrs = appendNonEmpty(attrs, "reason", rec.Reason)
	attrs = appendNonEmpty(attrs, "error", rec.Error)
	attrs = append(attrs, slog.Int64("bytes_in", rec.BytesIn), slog.Int64("bytes_out", rec.BytesOut),
		slog.Float64("duration_ms", float64(rec.Duration.Microseconds())/1000))
	p.log.LogAttrs(context.Background(), level, "decision", attrs...)
}

// maxDecisionAttrs is the most attributes emit puts on a decision line.
const maxDecisionAttrs = 18

func appendNonEmpty(attrs []slog.Attr, k, v string) []slog.Attr {
	if v == "" {
		return attrs
	}
	return append(attrs, slog.String(k, v))
}

// bufferedConn lets a hijacked connection keep the bytes its bufio.Reader
// already read.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite half-closes the underlying connection when it can.
func (c *bufferedConn) CloseWrite() error { return closeWrite(c.Conn) }

func newBufferedConn(c net.Conn, br *bufio.Reader) net.Conn {
	if br == nil || br.Buffered() == 0 {
		return c
	}
	return &bufferedConn{Conn: c, r: io.MultiReader(io.LimitReader(br, int64(br.Buffered())), c)}
}
