package mitm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/mcp"
	"github.com/sluicehq/sluice/policy"
)

// mcpStage makes MCP over Streamable HTTP visible to the policy and the
// records. For a JSON POST it reads a bounded prefix of the body
// (proxy.mcpMaxMessageBytes), parses the JSON-RPC message or batch and
// puts the rest back in front of the stream, so nothing is lost and the
// policy stage after it judges the method, tool, resource or prompt. An
// Mcp-Method or Mcp-Name header that disagrees with the body is answered
// 400 with a JSON-RPC error (the body is the truth: a header saying
// another tool could steer an intermediary that trusts headers). GET
// streams and DELETEs of a session are recorded with the session.
//
// On the response it watches the JSON or SSE answer as it streams (no
// delay per event): JSON-RPC error codes go into the record, tools/list
// results lose the tools the policy would deny (policy.ToolHider) and
// each tool's description and schema are compared with the first sight
// of it by this workload on this server (a change is a record of kind
// mcp_tool_changed).
type mcpStage struct{}

func (mcpStage) Name() string { return "mcp" }

// mcpRequest is what the MCP stage read of a request.
type mcpRequest struct {
	msgs     []mcp.Message
	batch    bool
	unparsed bool
	// stream is set for a GET asking for an event stream: Streamable
	// HTTP's stream of a session, or the HTTP+SSE transport's GET /sse.
	stream bool
	// session is the HTTP+SSE session whose endpoint the request was
	// POSTed to (mcp_session.go), and ids the ids of its requests it
	// awaits responses to.
	session *mcpSession
	ids     []string
}

// calls are the policy's view of the request, one per message.
func (m *mcpRequest) calls() []*policy.MCPCall {
	if m.unparsed {
		return []*policy.MCPCall{{Unparsed: true}}
	}
	out := make([]*policy.MCPCall, len(m.msgs))
	for i, g := range m.msgs {
		out[i] = &policy.MCPCall{Method: g.Method, Tool: g.Tool, Resource: g.Resource, Prompt: g.Prompt, Arguments: g.Arguments}
	}
	return out
}

// listID is the id of the request when it is one tools/list.
func (m *mcpRequest) listID() json.RawMessage {
	if len(m.msgs) == 1 && !m.batch && m.msgs[0].Method == "tools/list" && m.msgs[0].ID != nil {
		return m.msgs[0].ID
	}
	return nil
}

func (mcpStage) Request(x *Exchange) *Answer {
	r, rec := x.Req, x.Record
	h := r.Header
	rec.MCPSession, rec.MCPProtocol = headerGet(h, mcp.HeaderSession), headerGet(h, mcp.HeaderProtocol)
	looks := rec.MCPSession != "" || rec.MCPProtocol != "" || headerGet(h, mcp.HeaderMethod) != ""
	p := x.f.p
	if r.Method != http.MethodPost {
		if r.Method == http.MethodGet && strings.Contains(headerGet(h, "Accept"), "text/event-stream") {
			x.mcp = &mcpRequest{stream: true} // its events are watched as they stream (Response)
		}
		return nil // DELETEs carry the session, recorded above
	}
	looks = looks || strings.Contains(headerGet(h, "Accept"), "text/event-stream")
	var sess *mcpSession
	if p.mcpSessions.active() {
		sess = p.mcpSessions.get(mcpSessionKey(x.Workload().Name(), rec.Host, r.URL.RequestURI()))
	}
	if sess != nil {
		looks = true // a POST to the endpoint an HTTP+SSE stream named
		if rec.MCPSession == "" {
			rec.MCPSession = sess.id
		}
	}
	if !isJSON(headerGet(h, "Content-Type")) || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		if looks {
			x.mcp = &mcpRequest{unparsed: true, session: sess}
			rec.Error = "no JSON body"
		}
		return nil
	}
	limit := x.f.p.cfg.MCPMaxMessageBytes
	if r.ContentLength > limit {
		if looks {
			x.mcp = &mcpRequest{unparsed: true, session: sess}
			rec.Error = fmt.Sprintf("body longer than proxy.mcpMaxMessageBytes (%d)", limit)
		}
		return nil
	}
	_ = http.NewResponseController(x.w).SetReadDeadline(time.Now().Add(x.f.p.cfg.IdleTimeout.D()))
	prefix, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(prefix), r.Body), c: r.Body}
	if err != nil {
		return &Answer{Status: http.StatusBadRequest, Decision: audit.DecisionError, Reason: audit.ReasonMalformed, Close: true,
			Detail: "read request body: " + err.Error()}
	}
	var msgs []mcp.Message
	var batch bool
	if int64(len(prefix)) <= limit {
		msgs, batch, err = mcp.Parse(prefix)
	}
	if len(msgs) == 0 || err != nil {
		if looks {
			x.mcp = &mcpRequest{unparsed: true, session: sess}
			if err != nil {
				rec.Error = "not JSON-RPC: " + err.Error()
			} else {
				rec.Error = fmt.Sprintf("body longer than proxy.mcpMaxMessageBytes (%d)", limit)
			}
		}
		return nil
	}
	x.mcp = &mcpRequest{msgs: msgs, batch: batch, session: sess}
	m := &msgs[0]
	rec.MCPMethod, rec.MCPTool, rec.MCPResource, rec.MCPPrompt, rec.MCPID = m.Method, m.Tool, m.Resource, m.Prompt, m.IDString()
	if sess != nil {
		// The responses will come on the session's stream.
		for _, g := range msgs {
			if g.IsRequest() {
				var keep func(string) bool
				if g.Method == "tools/list" {
					keep = x.toolKeeper()
				}
				sess.expect(string(g.ID), g.Method, keep, x.start)
				x.mcp.ids = append(x.mcp.ids, string(g.ID))
			}
		}
	}
	if batch {
		return nil // the mirrored headers are defined for single messages
	}
	for _, c := range []struct{ header, body string }{{mcp.HeaderMethod, m.Method}, {mcp.HeaderName, m.Name()}} {
		v := h.Get(c.header)
		if v == "" || mcp.HeaderValue(v) == c.body {
			continue
		}
		detail := fmt.Sprintf("%s header %q differs from the body's %q", c.header, v, c.body)
		rec.MCPErrorCode = mcp.CodeHeaderMismatch
		return &Answer{Status: http.StatusBadRequest, Body: mcp.ErrorBody(m.ID, mcp.CodeHeaderMismatch, detail),
			Decision: audit.DecisionDeny, Reason: audit.ReasonMCPHeaderMismatch, Detail: detail}
	}
	return nil
}

// replayBody is a request body whose prefix was read and is given again.
type replayBody struct {
	io.Reader
	c io.Closer
}

func (b *replayBody) Close() error { return b.c.Close() }

// isJSON reports whether a Content-Type is JSON (application/json or a
// +json type).
func isJSON(ct string) bool { return isJSONType(mediaType(ct)) }

// mediaType is the media type of a Content-Type, lower case, without
// parameters. Unlike mime.ParseMediaType it does not check the
// parameters (nor allocate for them): a type with malformed ones is
// still read as its type, so such a body is judged rather than skipped.
func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	for i := 0; i < len(ct); i++ {
		if 'A' <= ct[i] && ct[i] <= 'Z' {
			return strings.ToLower(ct)
		}
	}
	return ct
}

// isJSONType reports whether a parsed media type is JSON.
func isJSONType(mt string) bool { return mt == "application/json" || strings.HasSuffix(mt, "+json") }

// mcpDenyAnswer is the answer to an MCP request the policy denied: a
// JSON-RPC error per request with an id, HTTP 200 as MCP clients expect
// errors; 403 with an error of id null when no message has an id
// (notifications, or an unparsed body). A POST to an HTTP+SSE endpoint
// is answered 403 with the errors: that transport answers on the stream,
// and its clients surface a POST that failed as the request's error.
// Nil for requests that are not MCP (and event-stream GETs).
func mcpDenyAnswer(x *Exchange, d policy.Decision) *Answer {
	m := x.mcp
	if m == nil || m.stream {
		return nil
	}
	code, msg := mcp.CodeDenied, fmt.Sprintf("denied by Sluice policy (rule %s: %s)", d.Rule, d.Reason)
	switch d.Reason {
	case audit.ReasonRateLimited:
		code, msg = mcp.CodeRateLimited, fmt.Sprintf("rate limited by Sluice policy (rule %s)", d.Rule)
	case audit.ReasonMCPToolUnacknowledged:
		code, msg = mcp.CodeToolChanged, fmt.Sprintf("denied by Sluice policy: tool %q changed (%s) since it was acknowledged; review it, then run sluice mcp ack", x.Record.MCPTool, strings.Join(x.Record.MCPToolFields, ", "))
	}
	x.Record.MCPErrorCode = code
	var errs [][]byte
	for _, g := range m.msgs {
		if g.ID != nil && g.Method != "" {
			errs = append(errs, mcp.ErrorBody(g.ID, code, msg))
		}
	}
	a := &Answer{Status: http.StatusOK, Decision: audit.DecisionDeny, Rule: d.Rule, Reason: d.Reason}
	switch {
	case len(errs) == 0:
		a.Status, a.Body = d.StatusCode(), mcp.ErrorBody(nil, code, msg)
	case m.batch:
		a.Body = append(append([]byte{'['}, bytes.Join(errs, []byte{','})...), ']')
	default:
		a.Body = errs[0]
	}
	if m.session != nil {
		a.Status = http.StatusForbidden
	}
	return a
}

// toolKeeper says which tools a tools/list answer to x keeps: nil keeps
// all (the decider hides none).
func (x *Exchange) toolKeeper() func(name string) bool {
	th, ok := x.f.p.decider().(policy.ToolHider)
	if !ok {
		return nil
	}
	var conn *policy.Conn
	if x.t != nil {
		conn = x.t.conn
	}
	req := &policy.Request{Conn: conn, Method: x.Req.Method, Host: x.policyHost, Path: x.Req.URL.EscapedPath(), Header: x.Req.Header,
		MCP: &policy.MCPCall{Method: "tools/list"}}
	ctx := x.Req.Context()
	return func(name string) bool { return !th.HideTool(ctx, req, name) }
}

func (mcpStage) Response(x *Exchange, resp *http.Response) *Answer {
	m := x.mcp
	if m == nil {
		return nil
	}
	rec := x.Record
	if sid := headerGet(resp.Header, mcp.HeaderSession); sid != "" && rec.MCPSession == "" {
		rec.MCPSession = sid // the session the initialize answer assigns
	}
	if len(m.msgs) == 0 && !m.stream {
		return nil
	}
	w := &mcpWatch{x: x, listID: m.listID(), stream: m.stream}
	if w.listID != nil || m.stream {
		w.keep = x.toolKeeper()
	}
	mt := mediaType(headerGet(resp.Header, "Content-Type"))
	limit := int(x.f.p.cfg.MCPMaxMessageBytes)
	switch {
	case mt == "text/event-stream":
		resp.Body = &sseBody{ReadCloser: resp.Body, w: w, p: mcp.SSE{Max: limit}, rewrite: w.keep != nil, max: limit}
	case m.stream:
		// A GET stream that is no event stream is not MCP's.
	case isJSONType(mt):
		jb := &jsonBody{ReadCloser: resp.Body, w: w, max: limit, rewrite: w.keep != nil}
		if jb.rewrite {
			resp.ContentLength = -1
			resp.Header.Del("Content-Length")
		}
		resp.Body = jb
	}
	return nil
}

// mcpWatch reads the JSON-RPC messages of a response: error codes of the
// answers to the request's ids, the tools of a tools/list answer, and
// the methods the server sends.
// On a GET stream (stream) it reads every message: a tools/list result
// (the answer to a tools/list POSTed to an HTTP+SSE endpoint, or any
// result listing tools) is filtered and checked for changed tools, the
// responses of an HTTP+SSE session complete the records of their POSTs,
// and the methods the server sends are noted; an endpoint event opens an
// HTTP+SSE session.
type mcpWatch struct {
	x      *Exchange
	listID json.RawMessage
	// keep says which tools a tools/list answer keeps; nil keeps all.
	keep func(name string) bool

	stream bool
	// session is the HTTP+SSE session the stream's endpoint event
	// opened; atomic as the body may be closed while it is read.
	session atomic.Pointer[mcpSession]
}

// awaits reports whether id is the id of one of the request's messages.
func (w *mcpWatch) awaits(id json.RawMessage) bool {
	for _, g := range w.x.mcp.msgs {
		if g.ID != nil && bytes.Equal(g.ID, id) {
			return true
		}
	}
	return false
}

// maxServerMethods bounds the record's mcp_server_methods.
const maxServerMethods = 16

// event looks at one SSE event of the response and returns its data
// rewritten (see message), else nil.
func (w *mcpWatch) event(e *mcp.Event) []byte {
	if e.Data == nil {
		return nil
	}
	if w.stream && e.Type == mcp.EventEndpoint {
		w.endpoint(e.Data)
		return nil
	}
	return w.message(e.Data)
}

// endpoint opens the HTTP+SSE session whose endpoint the stream named.
func (w *mcpWatch) endpoint(data []byte) {
	x := w.x
	ep, err := mcp.ParseEndpoint(x.Req.URL, data)
	if err != nil || w.session.Load() != nil {
		return
	}
	host := ep.Host
	if host == "" {
		host = x.Record.Host
	}
	if s := x.f.p.mcpSessions.add(mcpSessionKey(x.Workload().Name(), host, ep.RequestURI), ep.Session, x.mcpServer()); s != nil {
		w.session.Store(s)
	}
	if ep.Session != "" && x.Record.MCPSession == "" {
		x.Record.MCPSession = ep.Session
	}
}

// closed ends the stream's session, if it opened one.
func (w *mcpWatch) closed() {
	if s := w.session.Swap(nil); s != nil {
		w.x.f.p.mcpSessions.close(w.x.f.p, s)
	}
}

// noteServerMethod notes on the record a method of a request or a
// notification the server sent.
func (w *mcpWatch) noteServerMethod(method string) {
	rec := w.x.Record
	if !slices.Contains(rec.MCPServerMethods, method) && len(rec.MCPServerMethods) < maxServerMethods {
		rec.MCPServerMethods = append(rec.MCPServerMethods, method)
	}
}

// streamed looks at a message of a GET stream; see mcpWatch.
func (w *mcpWatch) streamed(msgs []mcp.Message, b []byte) []byte {
	rec := w.x.Record
	var out []byte
	for _, g := range msgs {
		if !g.Response {
			w.noteServerMethod(g.Method)
			continue
		}
		keep, list := w.keep, true
		if s := w.session.Load(); s != nil {
			if pd := s.answer(w.x.f.p, string(g.ID), g.ErrorCode); pd != nil {
				keep, list = pd.keep, pd.method == "tools/list"
			}
		}
		if !list || g.ErrorCode != 0 || len(msgs) != 1 {
			continue
		}
		if filtered, removed := w.list(b, keep); len(removed) > 0 {
			out = filtered
			rec.MCPHidden = append(rec.MCPHidden, removed...)
		}
	}
	return out
}

// list reads a tools/list answer b: each tool is compared with its
// acknowledged sight (noteTools), and the answer loses the tools keep
// refuses and, when the policy hides changed tools, those changed and
// not acknowledged (their new description never reaches the agent). It
// returns the answer rewritten and the tools removed; nothing when none
// was, or b lists no tools.
func (w *mcpWatch) list(b []byte, keep func(string) bool) ([]byte, []string) {
	filtered, tools, removed, err := mcp.FilterTools(b, keep)
	if err != nil {
		return nil, nil // not a list of tools
	}
	w.x.noteTools(tools)
	if hide := w.x.changedToHide(tools); hide != nil {
		both := func(name string) bool { return !hide[name] && (keep == nil || keep(name)) }
		if f, _, r, err := mcp.FilterTools(b, both); err == nil {
			filtered, removed = f, r
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	return filtered, removed
}

// changedToHide are the tools, of those listed, that a tools/list answer
// hides because they changed and were not acknowledged (the policy's
// mcp.onToolChange enforce with hideDenied); nil for none.
func (x *Exchange) changedToHide(tools []mcp.Tool) map[string]bool {
	tc, ok := x.f.p.decider().(policy.ToolChangeChecker)
	if !ok || !tc.HidesChangedTools() {
		return nil
	}
	var hide map[string]bool
	server, wl := x.mcpServer(), x.Workload().Name()
	for _, t := range tools {
		if _, changed := x.f.p.mcpTools.Changed(server, wl, t.Name); changed {
			if hide == nil {
				hide = map[string]bool{}
			}
			hide[t.Name] = true
		}
	}
	return hide
}

// message looks at one JSON-RPC message (or batch) of the response and
// returns it rewritten when it is a tools/list answer that loses tools,
// else nil.
func (w *mcpWatch) message(b []byte) []byte {
	msgs, _, err := mcp.Parse(b)
	if err != nil {
		return nil
	}
	if w.stream {
		return w.streamed(msgs, b)
	}
	var out []byte
	for _, g := range msgs {
		if !g.Response {
			// A POST's event stream carries the server's requests and
			// notifications too: those of the call (sampling, progress)
			// and, from revision 2026-07-28 on, all of them on the
			// subscriptions/listen stream that replaces the GET stream.
			w.noteServerMethod(g.Method)
			continue
		}
		if !w.awaits(g.ID) {
			continue
		}
		if g.ErrorCode != 0 && w.x.Record.MCPErrorCode == 0 {
			w.x.Record.MCPErrorCode = g.ErrorCode
		}
		if !bytes.Equal(g.ID, w.listID) || g.ErrorCode != 0 || len(msgs) != 1 {
			continue
		}
		if filtered, removed := w.list(b, w.keep); len(removed) > 0 {
			out = filtered
			w.x.Record.MCPHidden = removed
		}
	}
	return out
}

// noteTools compares each tool with its acknowledged sight (the first,
// or the last acknowledged) by this workload on this server and emits a
// record for each newly seen change (mcpstate.Store.Observe).
func (x *Exchange) noteTools(tools []mcp.Tool) {
	p := x.f.p
	now := time.Now()
	seen, err := p.mcpTools.Observe(x.mcpServer(), x.Workload().Name(), tools, now)
	if last := p.mcpStateWarned.Load(); err != nil && now.Unix()-last >= 60 && p.mcpStateWarned.CompareAndSwap(last, now.Unix()) {
		p.log.Warn("keep mcp tools (warned at most once a minute)", audit.KeyError, err)
	}
	for _, c := range seen {
		rec := x.f.record(audit.KindMCPToolChanged, time.Now())
		rec.Host, rec.Method, rec.Path, rec.Proto = x.Record.Host, x.Req.Method, x.Record.Path, x.Req.Proto
		rec.Reason, rec.MCPMethod, rec.MCPTool, rec.MCPSession = audit.ReasonMCPToolChanged, "tools/list", c.Tool, x.Record.MCPSession
		rec.MCPToolHash, rec.MCPToolPrevHash, rec.MCPToolFields = c.NewHash, c.OldHash, c.Fields
		rec.Error = "the tool's description or input schema differs from the tools/list that first listed it (or its last acknowledgement)"
		rec.Duration = 0
		p.emit(rec)
	}
}

// mcpServer names the MCP server x talks to, scheme://host[:port]/path:
// the path of the stream of its HTTP+SSE session, else its own.
func (x *Exchange) mcpServer() string {
	if x.mcp != nil && x.mcp.session != nil {
		return x.mcp.session.server
	}
	scheme, def := "http", uint16(80)
	if x.t != nil && x.t.useTLS {
		scheme, def = "https", 443
	}
	host := x.Record.Host
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]"
	}
	if port := x.Record.Port; port != 0 && port != def {
		host += ":" + strconv.Itoa(int(port))
	}
	return scheme + "://" + host + x.Req.URL.EscapedPath()
}

// sseBody watches an SSE response. Without rewriting, every read goes
// to the client as it came, the parser looking on. Rewriting (a
// tools/list answer with tools to hide), each event is held until its
// blank line and sent at once, rewritten or not; an event longer than
// max is passed on unread.
type sseBody struct {
	io.ReadCloser
	w       *mcpWatch
	p       mcp.SSE
	rewrite bool
	max     int

	buf     []byte
	hold    []byte // bytes of the event in progress, not yet sent
	flushed int    // bytes of the event in progress already sent
	out     []byte // ready to send
	err     error
}

func (b *sseBody) Read(p []byte) (int, error) {
	if !b.rewrite {
		n, err := b.ReadCloser.Read(p)
		b.p.Feed(p[:n], func(e *mcp.Event) { b.w.event(e) })
		return n, err
	}
	for len(b.out) == 0 && b.err == nil {
		if b.buf == nil {
			b.buf = make([]byte, 32<<10)
		}
		n, err := b.ReadCloser.Read(b.buf)
		b.hold = append(b.hold, b.buf[:n]...)
		start := 0
		b.p.Feed(b.buf[:n], func(e *mcp.Event) {
			held := e.Len - b.flushed
			ev := b.hold[start : start+held]
			start += held
			var rw []byte
			if b.flushed == 0 {
				rw = b.w.event(e)
			}
			b.flushed = 0
			if rw == nil {
				b.out = append(b.out, ev...)
				return
			}
			if e.Type != "" {
				b.out = append(b.out, "event: "+e.Type+"\n"...)
			}
			if e.ID != "" {
				b.out = append(b.out, "id: "+e.ID+"\n"...)
			}
			b.out = append(append(append(b.out, "data: "...), rw...), "\n\n"...)
		})
		b.hold = append(b.hold[:0], b.hold[start:]...)
		if len(b.hold) > b.max || err != nil {
			b.out = append(b.out, b.hold...)
			b.flushed += len(b.hold)
			b.hold = b.hold[:0]
		}
		b.err = err
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	if len(b.out) == 0 && b.err != nil {
		return n, b.err
	}
	return n, nil
}

// Close ends the stream's HTTP+SSE session, if any, and closes the body.
func (b *sseBody) Close() error {
	b.w.closed()
	return b.ReadCloser.Close()
}

// jsonBody watches a JSON response: it keeps up to max bytes and reads
// them as a JSON-RPC message at the end. Without rewriting the bytes go
// on as they come; rewriting, the body is held to its end (or to max,
// then sent as it is) and sent filtered.
type jsonBody struct {
	io.ReadCloser
	w       *mcpWatch
	max     int
	rewrite bool

	buf  []byte // read buffer when rewriting; its bytes are always copied out
	held []byte
	over bool
	out  []byte
	err  error
	done bool
}

func (b *jsonBody) Read(p []byte) (int, error) {
	if !b.rewrite {
		n, err := b.ReadCloser.Read(p)
		if !b.over {
			if b.held = append(b.held, p[:n]...); len(b.held) > b.max {
				b.over, b.held = true, nil
			}
		}
		if err == io.EOF && !b.over && !b.done {
			b.done = true
			b.w.message(b.held)
		}
		return n, err
	}
	for len(b.out) == 0 && b.err == nil {
		if b.buf == nil {
			b.buf = make([]byte, 32<<10)
		}
		buf := b.buf
		n, err := b.ReadCloser.Read(buf)
		b.err = err
		if b.over {
			b.out = append(b.out, buf[:n]...)
			continue
		}
		b.held = append(b.held, buf[:n]...)
		switch {
		case len(b.held) > b.max:
			b.over, b.out, b.held = true, b.held, nil
		case err == io.EOF:
			if rw := b.w.message(b.held); rw != nil {
				b.out = rw
			} else {
				b.out = b.held
			}
		case err != nil:
			b.out = b.held
		}
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	if len(b.out) == 0 && b.err != nil {
		return n, b.err
	}
	return n, nil
}

var _ ResponseStage = mcpStage{}
