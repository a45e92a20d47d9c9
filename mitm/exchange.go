package mitm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// Exchange is one request being served: what the stages see, and what
// they leave for the stages after them and for forwarding.
type Exchange struct {
	// Req is the client's request. Stages may change its header; the
	// upstream request is built from it once the chain has run.
	Req *http.Request
	// Record is the request's audit record; each stage fills what it
	// decided.
	Record *audit.Record
	// Decision is the policy's decision, set by the policy stage. Its
	// Header goes on every answer and response after that stage; its body
	// limits are enforced by the size stage.
	Decision policy.Decision
	// decided is set once Decision holds a policy decision.
	decided bool

	f    *flow
	w    http.ResponseWriter
	t    *target // set by the target stage
	host string  // the request's host, without port
	// policyHost is the name the policy judges: the one bound to what is
	// dialed, empty when none is (see the target stage).
	policyHost string
	port       uint16 // the port the request names (explicit mode)
	start      time.Time

	wraps   []func(io.ReadCloser) io.ReadCloser
	aborted atomic.Pointer[Answer]
	cache   *cacheLookup // the cache stage's state, nil when no cache applies

	bal  *balanced   // set by the balance stage for an upstream group's request
	mcp  *mcpRequest // set by the MCP stage for MCP requests
	body *countingBody
	ht   headerTimer // forward's response header timer, allocated with x
	// out is the request forward gives a pool's Transport, with its URL,
	// allocated with x (transportRequest); stop cancels it on an HTTP/2
	// pool.
	out    http.Request
	outURL url.URL
	stop   stopChan
	// stopCtx cancels out's context, derived per request, when the pool
	// is an HTTP/1.1 one whose Transport sends it (see cancelOut).
	stopCtx context.CancelCauseFunc
	// h1req is the request forward sends on its own goroutine, allocated
	// with x.
	h1req h1Request

	onFinish []func()  // OnFinish hooks, run once before the record is emitted
	finished bool      // finish ran (or runs): the record is emitted or held
	found    *findings // content findings (stage_content.go)

	// rec is what Record points to, allocated with x: one allocation per
	// request instead of two. Nothing may keep Record past the request
	// (audit.Sink says so; the MCP session keeps a copy): x is cleared
	// and serves a later request (recycle).
	rec audit.Record
}

// OnFinish adds f to what runs once the exchange is done, just before its
// record is emitted: a stage whose body wrapper learns things while the
// body streams (in the transport's goroutine) puts them in the record
// here, under its own lock.
func (x *Exchange) OnFinish(f func()) { x.onFinish = append(x.onFinish, f) }

// Workload is who sent the request.
func (x *Exchange) Workload() *workload.Identity { return &x.f.id }

// Conn is what the policy knows of the request's connection; nil before
// the target stage.
func (x *Exchange) Conn() *policy.Conn {
	if x.t == nil {
		return nil
	}
	return x.t.conn
}

// answered is the Answer of a stage that has already written the
// response itself (a CONNECT tunnel).
var answered = &Answer{}

// ServeHTTP serves one request of the flow: run the chain, forward,
// stream back, record.
func (f *flow) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	now := time.Now()
	x := exchanges.Get().(*Exchange)
	x.f, x.w, x.Req, x.start = f, w, r, now
	rec := &x.rec
	f.startRecord(rec, audit.KindHTTP, now)
	x.Record = rec
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
			f.p.log.Error("panic serving request", audit.KeyPanic, fmt.Sprint(v), audit.KeyMethod, r.Method, audit.KeyHost, rec.Host)
			if !x.finished { // a panic in the record's own emit is not recorded again
				rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonInternal, "panic: "+fmt.Sprint(v)
				x.notePolicy()
				x.finish()
			}
			panic(http.ErrAbortHandler)
		}
	}()
	for _, s := range f.p.stages {
		if a := s.Request(x); a != nil {
			x.answer(a)
			return
		}
	}
	x.forward()
	x.recycle()
}

// exchanges keeps cleared Exchanges for the next requests. An Exchange
// is some 2 KiB, half of what a request allocates: a new one each time
// is memory the CPU's cache has not held since the last collection,
// which cost more than clearing one that the last request left warm
// (bench-peers, h1 alone: a median of 5% less CPU per request at 32
// connections and 4% at 256, over 12 rounds each; nothing seen with
// three proxies at once; docs/performance.md, "After c735219").
var exchanges = sync.Pool{New: func() any { return new(Exchange) }}

// recycle clears x and keeps it for another request when nothing can
// reach it once ServeHTTP returns (reusable).
func (x *Exchange) recycle() {
	if !x.reusable() {
		return
	}
	*x = Exchange{}
	exchanges.Put(x)
}

// reusable reports whether x is done with once ServeHTTP returns, so
// that nothing can reach it:
//   - finish ran and emitted the record (one held for an MCP session's
//     stream keeps x: x.mcp);
//   - the request went out on this goroutine (x.h1req: no Transport
//     goroutine, response header timer or cancel func of x's outlives
//     forward, and h1Syncable sends no upgrade, whose relay would keep
//     x), or to an HTTP/2 pool (x.stop.ch: without a body its stream
//     reads x.out only to send the head and to make the response head,
//     both before RoundTrip returns; its cancel channel and context are
//     allocations of their own);
//   - it had no body (another goroutine may be reading it, and an
//     HTTP/2 stream's sendBody reads x.out);
//   - no stage state may outlive the handler: body wrappers, OnFinish
//     hooks, content findings, a cache fill, a balanced group's choice.
//
// Anything else is left to the collector. Nor may anything point into x
// once ServeHTTP returns: an HTTP/1.1 response's head may go out after
// it (h1Fast), so its header values must not be slices of x (an
// h1Response kept in x was tried: TestRecycledExchangeCarriesNothingOver
// saw an empty Content-Length).
func (x *Exchange) reusable() bool {
	return x.finished && (x.h1req.r != nil || x.stop.ch != nil) && x.body == nil && x.wraps == nil &&
		x.onFinish == nil && x.found == nil && x.mcp == nil && x.cache == nil && x.bal == nil
}

// growStack grows the stack of the goroutine the HTTP/2 server starts
// for a stream (h2SrvConn.runHandlers, its first call) while it is
// still shallow. The runtime starts a goroutine's stack at the average
// size it last saw in use (4 KiB here), and the request's path goes past
// it (at the policy's frames), so every request copied its stack once,
// deep down, where that copy walks many frames: 4-5% of the proxy's CPU
// under h2load. A frame of growStackBytes at the top makes the runtime
// double the stack (to 8 KiB, enough for the rest of the request) with
// only the frames above it to walk and copy: the copy's cost is that
// walk (called in flow.ServeHTTP, five frames down, it was still 5%).
//
// The frame's size is what grows the stack (the function's prologue
// checks it), not its use: the buffer is used only when use is set, and
// the callers pass false, so its 4 KiB are not cleared on every request
// (1-1.5% of the proxy's CPU under h2load). noinline keeps the caller's
// false from removing the branch, and with it the frame.
//
//go:noinline
func growStack(use bool) {
	if use {
		var buf [growStackBytes]byte
		keepFrame(buf[:])
	}
}

// keepFrame is a use of growStack's buffer the compiler cannot drop.
//
//go:noinline
func keepFrame([]byte) {}

// growStackBytes is more than the starting stack's free space, and less
// than what doubling it gives.
const growStackBytes = 4 << 10

// answer writes a and records it.
func (x *Exchange) answer(a *Answer) {
	if a == answered {
		return
	}
	rec := x.Record
	rec.Decision, rec.Rule, rec.Reason = a.Decision, a.Rule, a.Reason
	if a.Detail != "" {
		rec.Error = a.Detail
	}
	x.notePolicy()
	h := x.w.Header()
	if a.Close {
		h.Set("Connection", "close")
	}
	for k, vs := range x.Decision.Header {
		h[k] = append(h[k], vs...)
	}
	for k, vs := range a.Header {
		h[k] = append(h[k], vs...)
	}
	if _, ok := a.Header["Content-Type"]; !ok {
		h.Set("Content-Type", "application/json")
	}
	body := a.Body
	if body == nil {
		body = errorBody(a.Status, a.Rule, a.Detail)
	}
	x.w.WriteHeader(a.Status)
	n, _ := x.w.Write(body)
	rec.Status, rec.Source, rec.BytesOut = a.Status, audit.SourceSluice, int64(n)
	x.finish()
}

// fail is the Answer for a failure inside Sluice (decision error): no
// rule decided it.
func fail(code int, reason, detail string) *Answer {
	return &Answer{Status: code, Decision: audit.DecisionError, Reason: reason, Detail: detail}
}

// notePolicy keeps the policy's decision in the record when the outcome
// was decided by something else (an error inside Sluice, the client
// leaving): decision "error" must not hide what the policy said.
func (x *Exchange) notePolicy() {
	rec := x.Record
	if !x.decided || rec.Decision != audit.DecisionError {
		return
	}
	rec.PolicyDecision, rec.PolicyRule, rec.PolicyReason = decisionString(x.Decision), x.Decision.Rule, x.Decision.Reason
}

func errorBody(code int, rule, reason string) []byte {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Rule   string `json:"rule,omitempty"`
		Reason string `json:"reason"`
	}{http.StatusText(code), rule, reason})
	return append(b, '\n')
}

func (x *Exchange) finish() {
	x.finished = true
	for _, f := range x.onFinish {
		f()
	}
	if x.body != nil {
		x.Record.BytesIn = x.body.n.Load()
	}
	x.Record.Duration = time.Since(x.start)
	if m := x.mcp; m != nil && m.session != nil && len(m.ids) > 0 && m.session.hold(x.f.p, x, m.ids) {
		return // emitted when the response arrives on the session's stream (mcp_session.go)
	}
	x.f.setDNSName(x.Record) // emit's lookup, through the flow's memo
	x.f.p.emitNamed(x.Record)
}

// serveHTTP serves HTTP/1.1 or HTTP/2 on c until the client is done.
func (f *flow) serveHTTP(c net.Conn, h2 bool) {
	p := f.p
	defer f.finally(f.releaseTargets)
	defer f.finally(f.recordNoRequest)
	c = f.tap(c, h2)
	defer f.finally(func() { c.Close() }) // closes the capture flow too
	if h2 {
		// Each response's frames are written as it is ready: the
		// coalescing conn joins those of the responses ready meanwhile.
		p.h2.serveConn(f.ctx, coalesce(c), f, f)
		return
	}
	hc := newH1Conn(c, f)
	f.h1 = hc
	hc.onClose = f.finish
	f.handOff()
	p.h1.serve(hc)
}

// recordNoRequest leaves an L4 record for an HTTP connection that ended
// before a single request: nothing leaves Sluice unrecorded, not a client
// that connects and says nothing, nor one that starts a request head and
// never finishes it (slowloris).
func (f *flow) recordNoRequest() {
	if f.requests.Load() != 0 {
		return
	}
	rec := f.l4Record()
	rec.Decision, rec.Reason, rec.End = audit.DecisionClosed, audit.ReasonNoRequest, audit.EndClientClosed
	if f.h1 != nil && f.h1.partialHead() {
		rec.Decision, rec.Reason, rec.End = audit.DecisionError, audit.ReasonIncompleteHead, ""
		rec.Error = "the client began a request head and did not finish it"
	}
	f.p.emit(rec)
}
