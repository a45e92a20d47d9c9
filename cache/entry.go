package cache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Entry is a stored response. It is immutable once stored: Refresh
// returns a new Entry, so readers never see it change.
type Entry struct {
	Status int
	Header http.Header
	Body   []byte
	// RequestTime and ResponseTime are when the request that got this
	// response was sent and when its head arrived (RFC 9111 4.2.3).
	RequestTime, ResponseTime time.Time
	// Lifetime is the freshness lifetime computed when stored.
	Lifetime time.Duration
	// vary holds the request's values of the header fields the response
	// varies on, by canonical name.
	vary map[string]string
	// cc is the response's Cache-Control, parsed once; initial is the
	// age it had on arrival (RFC 9111 4.2.3 corrected_initial_age).
	cc      Directives
	initial time.Duration
}

// derive computes what Fresh and Age need from the stored header (and
// parses its Cache-Control once, for Lifetime too).
func (e *Entry) derive() *Entry {
	e.cc = ParseDirectives(e.Header)
	apparent := max(e.ResponseTime.Sub(dateOf(e.Header, e.ResponseTime)), 0)
	correctedAge := seconds(e.Header.Get("Age"), 0) + e.ResponseTime.Sub(e.RequestTime)
	e.initial = max(apparent, correctedAge)
	return e
}

// NewEntry makes an entry of a response to a request with header reqH,
// judged under r.
func NewEntry(r *Rule, reqH http.Header, status int, h http.Header, body []byte, reqTime, respTime time.Time) *Entry {
	e := (&Entry{Status: status, Header: h, Body: body, RequestTime: reqTime, ResponseTime: respTime}).derive()
	e.Lifetime = r.lifetime(e.cc, h, respTime)
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if f = http.CanonicalHeaderKey(strings.TrimSpace(f)); f != "" {
				if e.vary == nil {
					e.vary = map[string]string{}
				}
				// A copy: a request's values may share memory with
				// its whole head (the proxy's own parser).
				e.vary[f] = strings.Clone(normalize(reqH.Values(f)))
			}
		}
	}
	return e
}

func normalize(vs []string) string {
	return strings.Join(strings.Fields(strings.Join(vs, ",")), " ")
}

// Matches reports whether a request with header reqH selects this entry:
// its values of the fields named by Vary are those the entry was stored
// with (RFC 9111 4.1).
func (e *Entry) Matches(reqH http.Header) bool {
	for f, v := range e.vary {
		if normalize(reqH.Values(f)) != v {
			return false
		}
	}
	return true
}

// Age is the entry's current age at now (RFC 9111 4.2.3).
func (e *Entry) Age(now time.Time) time.Duration {
	return e.initial + max(now.Sub(e.ResponseTime), 0)
}

// Fresh reports whether the entry may answer a request with header reqH
// at now without asking the upstream: within its lifetime, with no
// no-cache on either side, and within the request's max-age and
// min-fresh.
func (e *Entry) Fresh(reqH http.Header, now time.Time) bool {
	req := ParseDirectives(reqH)
	if req.NoCache || e.cc.NoCache {
		return false
	}
	age := e.Age(now)
	if req.MaxAge >= 0 && age > req.MaxAge {
		return false
	}
	left := e.Lifetime - age
	if req.MinFresh >= 0 && left < req.MinFresh {
		return false
	}
	return left > 0
}

// Validators returns the entry's ETag and Last-Modified (either may be
// empty).
func (e *Entry) Validators() (etag, lastModified string) {
	return e.Header.Get("ETag"), e.Header.Get("Last-Modified")
}

// Conditional sets If-None-Match and If-Modified-Since on h from the
// entry's validators and reports whether it set any.
func (e *Entry) Conditional(h http.Header) bool {
	etag, lm := e.Validators()
	if etag != "" {
		h.Set("If-None-Match", etag)
	}
	if lm != "" {
		h.Set("If-Modified-Since", lm)
	}
	return etag != "" || lm != ""
}

// notUpdated are the header fields a 304 must not replace (RFC 9111
// 3.2: the framing of the stored body).
var notUpdated = map[string]bool{"Content-Length": true, "Content-Encoding": true, "Transfer-Encoding": true, "Content-Range": true}

// Refresh returns the entry updated by a 304 with header h, for a
// revalidation sent at reqTime and answered at respTime (RFC 9111 4.3.4):
// the 304's fields replace the stored ones, and the age starts again.
func (e *Entry) Refresh(r *Rule, h http.Header, reqTime, respTime time.Time) *Entry {
	nh := e.Header.Clone()
	for k, vs := range h {
		if !notUpdated[k] {
			nh[k] = vs
		}
	}
	if h.Get("Date") == "" {
		nh.Del("Date")
	}
	if h.Get("Age") == "" {
		nh.Del("Age")
	}
	n := (&Entry{Status: e.Status, Header: nh, Body: e.Body, RequestTime: reqTime, ResponseTime: respTime, vary: e.vary}).derive()
	n.Lifetime = r.lifetime(n.cc, nh, respTime)
	return n
}

// NotModified reports whether a client's own conditional request (header
// reqH) is satisfied by the entry, so a 304 answers it (RFC 9110 13.1).
func (e *Entry) NotModified(reqH http.Header) bool {
	etag, lm := e.Validators()
	if inm := reqH.Get("If-None-Match"); inm != "" {
		if etag == "" {
			return false
		}
		for _, t := range strings.Split(inm, ",") {
			if t = strings.TrimSpace(t); t == "*" || weakTag(t) == weakTag(etag) {
				return true
			}
		}
		return false
	}
	ims, err := http.ParseTime(reqH.Get("If-Modified-Since"))
	if err != nil || lm == "" {
		return false
	}
	lmt, err := http.ParseTime(lm)
	return err == nil && !lmt.After(ims)
}

// weakTag is the opaque part of an entity tag: If-None-Match uses the
// weak comparison.
func weakTag(t string) string { return strings.TrimPrefix(t, "W/") }

// size is what the entry costs the store: its body, header and key.
func (e *Entry) size(key string) int64 {
	n := int64(len(e.Body) + len(key) + 256)
	for k, vs := range e.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// AgeHeader is the Age header value of the entry at now.
func (e *Entry) AgeHeader(now time.Time) string {
	return strconv.FormatInt(int64(e.Age(now)/time.Second), 10)
}
