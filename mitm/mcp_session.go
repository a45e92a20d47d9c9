package mitm

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// The HTTP+SSE transport of MCP (revision 2024-11-05, still served by
// many servers) splits a session in two: a GET stream whose first event,
// "endpoint", names the URI the client POSTs its JSON-RPC messages to,
// and those POSTs, answered 202 with the responses arriving on the
// stream. mcpSessions remembers the endpoints the streams through this
// proxy named, so a POST to one is read as MCP, and holds a POST's
// record until its response arrives on the stream (or the stream ends, or
// proxy.idleTimeout passes), so the record carries the duration to the
// final response and its error code.

// Bounds of the session table.
const (
	maxMCPSessions = 4096 // endpoints remembered at once
	maxMCPPending  = 1024 // requests awaiting their response, per session
)

// mcpSessions is the table of open HTTP+SSE sessions, keyed by workload,
// host and endpoint request URI. Safe for concurrent use.
type mcpSessions struct {
	n  atomic.Int32 // entries, read without the lock on every POST
	mu sync.Mutex
	m  map[string]*mcpSession
}

// mcpSessionKey is the key of the endpoint uri on host for workload.
func mcpSessionKey(workload, host, uri string) string {
	return workload + "\x00" + host + "\x00" + uri
}

// add registers a session under key, replacing one there; nil when the
// table is full.
func (t *mcpSessions) add(key, id, server string) *mcpSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*mcpSession{}
	}
	if _, ok := t.m[key]; !ok && len(t.m) >= maxMCPSessions {
		return nil
	}
	s := &mcpSession{key: key, id: id, server: server, pending: map[string]*mcpPending{}}
	t.m[key] = s
	t.n.Store(int32(len(t.m)))
	return s
}

// active reports whether any session is open (no lock: every POST asks).
func (t *mcpSessions) active() bool { return t.n.Load() != 0 }

// get is the session of key, nil for none.
func (t *mcpSessions) get(key string) *mcpSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[key]
}

// close forgets s (its stream ended) and emits the records it held.
func (t *mcpSessions) close(p *Proxy, s *mcpSession) {
	t.mu.Lock()
	if t.m[s.key] == s {
		delete(t.m, s.key)
		t.n.Store(int32(len(t.m)))
	}
	t.mu.Unlock()
	s.mu.Lock()
	s.closed = true
	var out []*audit.Record
	for id, pd := range s.pending {
		if pd.rec != nil {
			pd.timer.Stop()
			out = append(out, pd.rec)
		}
		delete(s.pending, id)
	}
	s.mu.Unlock()
	for _, rec := range out {
		p.emit(rec)
	}
}

// mcpSession is one HTTP+SSE session: the requests POSTed to its
// endpoint that await their response on its stream.
type mcpSession struct {
	key, id string
	server  string // the MCP server of its stream (Exchange.mcpServer)

	mu      sync.Mutex
	pending map[string]*mcpPending // by JSON-RPC id as written
	closed  bool
}

// mcpPending is a request POSTed to a session's endpoint.
type mcpPending struct {
	method string
	// keep says which tools a tools/list answer keeps (the POST's
	// policy view); nil keeps all.
	keep  func(name string) bool
	start time.Time
	// rec is the POST's record once its exchange is done and the
	// response has not arrived yet; it is emitted when it does.
	rec   *audit.Record
	timer *time.Timer
	// answered: the response arrived before the POST's exchange was done.
	answered bool
	end      time.Time
	code     int
}

// expect notes a request POSTed with id.
func (s *mcpSession) expect(id, method string, keep func(string) bool, start time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.pending) >= maxMCPPending {
		return
	}
	if _, dup := s.pending[id]; !dup {
		s.pending[id] = &mcpPending{method: method, keep: keep, start: start}
	}
}

// hold is called as the POST exchange x is done, with the ids it
// POSTed: it reports whether the session keeps its record to emit when
// the response to the first id arrives. A POST the upstream did not
// accept (an answer of Sluice's, an error status) is not held and its
// ids are forgotten.
func (s *mcpSession) hold(p *Proxy, x *Exchange, ids []string) bool {
	rec := x.Record
	accepted := rec.Source == audit.SourceUpstream && rec.Status/100 == 2
	s.mu.Lock()
	defer s.mu.Unlock()
	held := false
	for _, id := range ids {
		pd := s.pending[id]
		switch {
		case pd == nil:
		case !accepted || s.closed || pd.answered || id != rec.MCPID:
			if pd.answered && id == rec.MCPID {
				pd.apply(rec)
			}
			if !accepted || pd.answered {
				delete(s.pending, id)
			}
		default:
			// A copy: the record lives inside its Exchange, which holds
			// the request, its body's prefix and the parsed messages,
			// and must not wait with it for the answer.
			cp := *rec
			pd.rec = &cp
			pd.timer = time.AfterFunc(p.cfg.IdleTimeout.D(), func() { s.expire(p, id, pd) })
			held = true
		}
	}
	return held
}

// apply puts the response's time and error code into rec.
func (pd *mcpPending) apply(rec *audit.Record) {
	rec.Duration = pd.end.Sub(pd.start)
	if pd.code != 0 && rec.MCPErrorCode == 0 {
		rec.MCPErrorCode = pd.code
	}
}

// answer notes the response to id (with its JSON-RPC error code, 0 for
// none) seen on the stream, emits the POST's record if it was held, and
// returns what was POSTed (nil for an id not awaited).
func (s *mcpSession) answer(p *Proxy, id string, code int) *mcpPending {
	s.mu.Lock()
	pd := s.pending[id]
	if pd == nil {
		s.mu.Unlock()
		return nil
	}
	pd.answered, pd.end, pd.code = true, time.Now(), code
	rec := pd.rec
	if rec != nil {
		pd.timer.Stop()
		pd.apply(rec)
		delete(s.pending, id)
	}
	s.mu.Unlock()
	if rec != nil {
		p.emit(rec)
	}
	return pd
}

// expire emits a held record whose response did not come in time (its
// duration stays the POST's own).
func (s *mcpSession) expire(p *Proxy, id string, pd *mcpPending) {
	s.mu.Lock()
	if s.pending[id] != pd || pd.rec == nil {
		s.mu.Unlock()
		return
	}
	delete(s.pending, id)
	s.mu.Unlock()
	p.emit(pd.rec)
}
