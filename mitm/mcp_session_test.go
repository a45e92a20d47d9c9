package mitm

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// syncSink keeps the records a proxy emits, from any goroutine.
type syncSink struct {
	mu   sync.Mutex
	recs []*audit.Record
}

func (s *syncSink) Record(r *audit.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, r)
}

func (s *syncSink) all() []*audit.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.recs)
}

// mcpStageFlow is a flow under mcpStagePolicy (rm denied) whose records
// go to the returned sink.
func mcpStageFlow(t *testing.T) (*flow, *syncSink) {
	t.Helper()
	e, err := policy.Parse([]byte(mcpStagePolicy), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := stageFlow(t, e)
	sink := &syncSink{}
	f.p.deps.Audit = sink
	fixedTarget(f, "mcp.test", policy.ConnDecision{})
	return f, sink
}

// mcpStageRequest runs the MCP and policy stages on a request to
// mcp.test, as the chain does.
func mcpStageRequest(t *testing.T, f *flow, method, uri, body string) (*Exchange, *Answer) {
	t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, "https://mcp.test"+uri, nil)
		r.Header.Set("Accept", "text/event-stream")
	} else {
		r = httptest.NewRequest(method, "https://mcp.test"+uri, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	x := stageExchange(f, r)
	x.t = f.fixed
	x.policyHost, x.Record.Host = "mcp.test", "mcp.test"
	if a := (mcpStage{}).Request(x); a != nil {
		return x, a
	}
	return x, policyStage{}.Request(x)
}

// sseStream is the body of an event stream the test writes event by
// event, and the client's reader of what the proxy passes on.
type sseStream struct {
	w    *io.PipeWriter
	resp *http.Response
	read *bufio.Reader
}

func openStream(t *testing.T, x *Exchange) *sseStream {
	t.Helper()
	pr, pw := io.Pipe()
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, ContentLength: -1, Body: pr}
	checkAnswer(t, mcpStage{}.Response(x, resp), nil)
	s := &sseStream{w: pw, resp: resp, read: bufio.NewReader(resp.Body)}
	t.Cleanup(func() { pw.Close(); resp.Body.Close() })
	return s
}

// send writes one event and returns the event the client reads: it
// passes as soon as its blank line is written.
func (s *sseStream) send(t *testing.T, event string) string {
	t.Helper()
	go func() { _, _ = io.WriteString(s.w, event) }()
	var got strings.Builder
	for !strings.HasSuffix(got.String(), "\n\n") {
		line, err := s.read.ReadString('\n')
		got.WriteString(line)
		if err != nil {
			t.Fatalf("reading the stream after %q: %v", got.String(), err)
		}
	}
	return got.String()
}

// Streamable HTTP's GET stream: a tools/list result arriving on it loses
// the denied tools, and the server's own requests and notifications are
// noted in the stream's record.
func TestMCPGetStream(t *testing.T) {
	f, _ := mcpStageFlow(t)
	x, a := mcpStageRequest(t, f, "GET", "/mcp", "")
	checkAnswer(t, a, nil)
	s := openStream(t, x)
	if got := s.send(t, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n"); !strings.Contains(got, "sampling/createMessage") {
		t.Fatalf("a server request changed on the way: %q", got)
	}
	s.send(t, "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n")
	got := s.send(t, `data: {"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"echo"},{"name":"rm"}]}}`+"\n\n")
	if strings.Contains(got, `"rm"`) || !strings.Contains(got, `"echo"`) {
		t.Errorf("tools/list result on the GET stream reaches the client as %q, want rm removed and echo kept", got)
	}
	if want := []string{"sampling/createMessage", "notifications/tools/list_changed"}; !slices.Equal(x.Record.MCPServerMethods, want) {
		t.Errorf("record mcp_server_methods %q, want %q", x.Record.MCPServerMethods, want)
	}
	if !slices.Equal(x.Record.MCPHidden, []string{"rm"}) {
		t.Errorf("record mcp_hidden %q, want [rm]", x.Record.MCPHidden)
	}
}

// A POST's event stream (revision 2026-07-28's subscriptions/listen, the
// official Go SDK's successor of the GET stream): the server's requests
// and notifications pass as they came and are noted in the POST's record.
func TestMCPPostStreamServerMethods(t *testing.T) {
	f, _ := mcpStageFlow(t)
	x, a := mcpStageRequest(t, f, "POST", "/mcp", `{"jsonrpc":"2.0","id":2,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}`)
	checkAnswer(t, a, nil)
	s := openStream(t, x)
	for _, ev := range []string{
		"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"elicitation/create\",\"params\":{}}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n",
	} {
		if got := s.send(t, ev); got != ev {
			t.Errorf("the stream passed %q as %q", ev, got)
		}
	}
	if want := []string{"notifications/tools/list_changed", "elicitation/create"}; !slices.Equal(x.Record.MCPServerMethods, want) {
		t.Errorf("record mcp_server_methods %q, want %q", x.Record.MCPServerMethods, want)
	}
}

// The HTTP+SSE transport: the stream's endpoint event makes POSTs to
// that URI MCP; a POST's record waits for its response on the stream
// (duration to it, its error code); a denied call is a 403 carrying the
// JSON-RPC error; a tools/list answered on the stream is filtered.
func TestMCPLegacySSE(t *testing.T) {
	f, sink := mcpStageFlow(t)
	gx, a := mcpStageRequest(t, f, "GET", "/sse", "")
	checkAnswer(t, a, nil)
	s := openStream(t, gx)
	if got := s.send(t, "event: endpoint\ndata: /messages?sessionId=abc\n\n"); got != "event: endpoint\ndata: /messages?sessionId=abc\n\n" {
		t.Fatalf("endpoint event reaches the client as %q", got)
	}

	// An allowed call: 202, its record held until the response.
	px, a := mcpStageRequest(t, f, "POST", "/messages?sessionId=abc", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}`)
	checkAnswer(t, a, nil)
	if px.Record.MCPSession != "abc" || px.Record.MCPTool != "echo" {
		t.Fatalf("POST record session %q tool %q, want abc echo", px.Record.MCPSession, px.Record.MCPTool)
	}
	px.Record.Status, px.Record.Source = 202, audit.SourceUpstream
	px.finish()
	if n := len(sink.all()); n != 0 {
		t.Fatalf("%d records before the response arrived on the stream, want the POST's held", n)
	}
	time.Sleep(20 * time.Millisecond)
	s.send(t, `data: {"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad"}}`+"\n\n")
	recs := sink.all()
	// The session held a copy of the POST's record (its Exchange is not
	// kept waiting): the same call, another pointer.
	if len(recs) != 1 || recs[0].MCPTool != "echo" || recs[0].MCPID != px.Record.MCPID || recs[0].MCPSession != "abc" {
		t.Fatalf("records %+v after the response, want the POST's", recs)
	}
	if recs[0].MCPErrorCode != -32602 || recs[0].Duration < 20*time.Millisecond {
		t.Errorf("POST record error code %d duration %s, want -32602 and the time to the response (≥20ms)", recs[0].MCPErrorCode, recs[0].Duration)
	}

	// A denied call: 403 with the JSON-RPC error, not held.
	dx, a := mcpStageRequest(t, f, "POST", "/messages?sessionId=abc", `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"rm"}}`)
	checkAnswer(t, a, &answerWant{403, "deny", "no-rm", audit.ReasonDeniedByRule})
	if !strings.Contains(string(a.Body), `"id":8,"error":{"code":-32030`) {
		t.Errorf("denied POST body %s, want a JSON-RPC error of id 8", a.Body)
	}
	dx.answer(a)
	if n := len(sink.all()); n != 2 {
		t.Errorf("%d records after a denied POST, want it emitted at once", n)
	}

	// tools/list POSTed, answered on the stream: rm hidden.
	lx, _ := mcpStageRequest(t, f, "POST", "/messages?sessionId=abc", `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`)
	lx.Record.Status, lx.Record.Source = 202, audit.SourceUpstream
	lx.finish()
	got := s.send(t, `data: {"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"echo"},{"name":"rm"}]}}`+"\n\n")
	if strings.Contains(got, `"rm"`) || !strings.Contains(got, `"echo"`) {
		t.Errorf("tools/list answer on the stream reaches the client as %q, want rm removed", got)
	}

	// A POST elsewhere is not the session's; once the stream closes its
	// endpoint is forgotten and held records are emitted.
	ox, _ := mcpStageRequest(t, f, "POST", "/messages?sessionId=other", `{"hello":1}`)
	if ox.mcp != nil {
		t.Errorf("a POST to another URI read as MCP")
	}
	hx, _ := mcpStageRequest(t, f, "POST", "/messages?sessionId=abc", `{"jsonrpc":"2.0","id":10,"method":"ping"}`)
	hx.Record.Status, hx.Record.Source = 202, audit.SourceUpstream
	hx.finish()
	before := len(sink.all())
	s.resp.Body.Close()
	if n := len(sink.all()); n != before+1 {
		t.Errorf("closing the stream emitted %d held records, want 1", n-before)
	}
	nx, _ := mcpStageRequest(t, f, "POST", "/messages?sessionId=abc", `{"hello":1}`)
	if nx.mcp != nil {
		t.Errorf("a POST to a closed session's endpoint still read as MCP")
	}
}

// A record the HTTP+SSE session holds until its answer comes on the
// stream is a copy: the Exchange it was made in (the request, its body's
// prefix, the parsed messages) is freed meanwhile.
func TestMCPSessionHoldKeepsNoExchange(t *testing.T) {
	f, _ := mcpStageFlow(t)
	s := &mcpSession{key: "k", id: "id", pending: map[string]*mcpPending{}}
	s.expect("1", "tools/call", nil, time.Now())
	var freed atomic.Bool
	func() {
		x := &Exchange{f: f, start: time.Now()}
		x.Record = &x.rec
		x.out.Header = map[string][]string{"Big": {string(make([]byte, 1<<20))}} // stands for Req, body prefix, msgs...
		rec := x.Record
		rec.Source, rec.Status, rec.MCPID = audit.SourceUpstream, 202, "1"
		runtime.SetFinalizer(x, func(*Exchange) { freed.Store(true) })
		if !s.hold(f.p, x, []string{"1"}) {
			t.Fatal("not held")
		}
	}()
	for i := 0; i < 5 && !freed.Load(); i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if !freed.Load() {
		t.Errorf("the Exchange (and the 1 MiB it references) stays alive while its record is held")
	}
	s.mu.Lock()
	for _, pd := range s.pending {
		if pd.timer != nil {
			pd.timer.Stop()
		}
	}
	s.mu.Unlock()
	runtime.KeepAlive(s)
}
