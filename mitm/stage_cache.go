package mitm

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cache"
)

// cacheStage is the response cache of the rule that allowed the request
// (policy.Decision.Cache, rules in cache/): a fresh stored response
// answers a GET or HEAD without the upstream; a stale one with validators
// is revalidated (If-None-Match / If-Modified-Since added to the request)
// and a 304 refreshes and serves it; a storable response is stored while
// it streams to the client, never delaying it. The client gets
// X-Cache-Status; the record's Cache says the same in lower case.
//
// Responses are kept per workload (slotKey), or once for every workload
// with shared: true. A request with another method to the same URL that
// succeeds drops the stored response (RFC 9111 4.4).
type cacheStage struct{}

func (cacheStage) Name() string { return "cache" }

// HeaderCacheStatus tells the client what the cache did.
const HeaderCacheStatus = "X-Cache-Status"

// What the cache did, as X-Cache-Status says it.
const (
	cacheHit         = "Hit"
	cacheMiss        = "Miss"
	cacheBypass      = "Bypass"
	cacheExpired     = "Expired"
	cacheRevalidated = "Revalidated"
)

// cacheLookup is the cache stage's state for one request, from Request
// to Response.
type cacheLookup struct {
	rule   *cache.Rule
	key    string
	status string
	stale  *cache.Entry // being revalidated with conditionals the stage added
	sent   time.Time
	// clientCond: the client sent conditionals of its own.
	clientCond bool
}

func (c *cacheLookup) set(x *Exchange, status string) {
	c.status = status
	x.Record.Cache = strings.ToLower(status)
}

func (cacheStage) Request(x *Exchange) *Answer {
	rule, store := x.Decision.Cache, x.f.p.cache
	if rule == nil || store == nil {
		return nil
	}
	r := x.Req
	c := &cacheLookup{rule: rule, key: cacheKey(x, rule), sent: time.Now(), clientCond: conditional(r.Header)}
	x.cache = c
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || headerGet(r.Header, "Range") != "" || cache.ParseDirectives(r.Header).NoStore {
		c.set(x, cacheBypass)
		return nil
	}
	e, ok := store.Get(c.key)
	switch {
	case !ok || !e.Matches(r.Header):
		c.set(x, cacheMiss)
		return nil
	case e.Fresh(r.Header, c.sent):
		c.set(x, cacheHit)
		return c.serve(x, e, c.sent)
	}
	c.set(x, cacheExpired)
	if !c.clientCond && e.Conditional(r.Header) {
		c.stale = e
	}
	return nil
}

func (cacheStage) Response(x *Exchange, resp *http.Response) *Answer {
	c := x.cache
	if c == nil {
		return nil
	}
	store, r, now := x.f.p.cache, x.Req, time.Now()
	if c.status == cacheBypass {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && resp.StatusCode < 400 {
			store.Remove(c.key)
		}
		resp.Header.Set(HeaderCacheStatus, cacheBypass)
		return nil
	}
	if c.stale != nil && resp.StatusCode == http.StatusNotModified {
		e := c.stale.Refresh(c.rule, resp.Header, c.sent, now)
		store.Put(c.key, e)
		c.set(x, cacheRevalidated)
		return c.serve(x, e, now)
	}
	resp.Header.Set(HeaderCacheStatus, c.status)
	if r.Method != http.MethodGet {
		return nil
	}
	if ok, _ := c.rule.Storable(r.Method, r.Header, resp.StatusCode, resp.Header, now); !ok {
		if c.status == cacheExpired {
			store.Remove(c.key)
		}
		return nil
	}
	h := resp.Header.Clone()
	removeHopHeaders(h, false)
	h.Del(HeaderCacheStatus)
	reqH, status, key, rule, sent := r.Header.Clone(), resp.StatusCode, c.key, c.rule, c.sent
	resp.Body = newStoreBody(resp.Body, rule.MaxSize(), resp.ContentLength, func(body []byte) {
		store.Put(key, cache.NewEntry(rule, reqH, status, h, body, sent, now))
	})
	return nil
}

// serve is the Answer made of a stored response: a 304 when the client's
// own conditional matches it, the head alone for HEAD.
func (c *cacheLookup) serve(x *Exchange, e *cache.Entry, now time.Time) *Answer {
	r := x.Req
	h := e.Header.Clone()
	h.Set("Age", e.AgeHeader(now))
	h.Set(HeaderCacheStatus, c.status)
	status, body := e.Status, e.Body
	if c.clientCond && e.NotModified(r.Header) {
		status, body = http.StatusNotModified, nil
	}
	if r.Method == http.MethodHead || body == nil {
		body = []byte{}
	}
	if bodyAllowed(status) {
		h.Set("Content-Length", strconv.Itoa(len(e.Body)))
	} else {
		h.Del("Content-Length")
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // not the JSON of Sluice's own answers
	}
	d := x.Decision
	return &Answer{Status: status, Header: h, Body: body, Decision: decisionString(d), Rule: d.Rule, Reason: d.Reason}
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// conditional reports whether the client sent a conditional of its own:
// the stage then forwards it as it is.
func conditional(h http.Header) bool {
	for _, k := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range"} {
		if h.Get(k) != "" {
			return true
		}
	}
	return false
}

// cacheKey names a request's stored response: its scope (the workload,
// or "*" when shared), scheme, host, port and request target.
func cacheKey(x *Exchange, rule *cache.Rule) string {
	scope := "*"
	if !rule.Shared {
		scope = slotKey(&x.f.id)
	}
	scheme := "http://"
	if x.t.useTLS {
		scheme = "https://"
	}
	return scope + " " + scheme + strings.ToLower(x.host) + ":" + strconv.Itoa(int(x.t.port)) + x.Req.URL.RequestURI()
}

// storeBody copies a response body, as the client reads it, into a
// buffer of at most max bytes, and hands it to done when it ends whole
// (at EOF, with the length the upstream declared). A body over max, or
// one ending in an error (a cut, the upstream failing), is not handed.
type storeBody struct {
	io.ReadCloser
	buf  []byte
	max  int64
	want int64 // Content-Length, -1 when unknown
	done func([]byte)
}

func newStoreBody(rc io.ReadCloser, max, want int64, done func([]byte)) *storeBody {
	b := &storeBody{ReadCloser: rc, max: max, want: want, done: done}
	if want > 0 && want <= max {
		b.buf = make([]byte, 0, want)
	}
	return b
}

func (b *storeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.done == nil {
		return n, err
	}
	if int64(len(b.buf)+n) > b.max {
		b.done, b.buf = nil, nil
		return n, err
	}
	b.buf = append(b.buf, p[:n]...)
	if err == io.EOF {
		if b.want < 0 || int64(len(b.buf)) == b.want {
			b.done(b.buf)
		}
		b.done, b.buf = nil, nil
	} else if err != nil {
		b.done, b.buf = nil, nil
	}
	return n, err
}

var _ ResponseStage = cacheStage{}
