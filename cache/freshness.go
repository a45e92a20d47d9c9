// Package cache is the HTTP response cache of the proxy's cache stage: the
// freshness rules of RFC 9111 (what may be stored, for how long, and when a
// stored response must be revalidated) and a memory-bounded LRU store. It
// knows nothing of the proxy or the policy: both give it plain values, so
// every rule is table-testable.
//
// What it implements of RFC 9111, and where it is stricter:
//   - stored: GET responses with a status and media type the rule lists;
//     never with no-store (request or response), Vary: *, or, in a shared
//     cache, private or Set-Cookie;
//   - a shared cache stores a response to a request carrying Authorization
//     or Cookie only when the response says public (RFC 9111 3.5 also
//     accepts s-maxage and must-revalidate for Authorization; Sluice asks
//     for the explicit word);
//   - freshness lifetime: s-maxage (shared only), max-age, Expires - Date,
//     then the rule's ttl, else 10% of the Last-Modified age (at most a
//     day);
//   - age: RFC 9111 4.2.3 (Age header, response delay, residence);
//   - no-cache (response), no-cache or max-age/min-fresh (request), and
//     Pragma: no-cache without Cache-Control force revalidation;
//   - a stale response is never served: it is revalidated with
//     If-None-Match / If-Modified-Since, and a 304 refreshes it (4.3.4).
package cache

import (
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Directives are the Cache-Control directives the cache acts on. An
// absent max-age, s-maxage or min-fresh is -1.
type Directives struct {
	NoStore, NoCache, Private, Public, MustRevalidate bool
	MaxAge, SMaxAge, MinFresh                         time.Duration
}

// ParseDirectives reads the Cache-Control header fields of h (and Pragma:
// no-cache when there is no Cache-Control). Unknown directives are
// ignored; a malformed delta-seconds makes the directive absent, except
// for max-age and s-maxage, where it means 0 (stale), as RFC 9111 1.2.2
// advises.
func ParseDirectives(h http.Header) Directives {
	d := Directives{MaxAge: -1, SMaxAge: -1, MinFresh: -1}
	ccs := h.Values("Cache-Control")
	if len(ccs) == 0 {
		for _, p := range h.Values("Pragma") {
			if strings.Contains(strings.ToLower(p), "no-cache") {
				d.NoCache = true
			}
		}
		return d
	}
	for _, cc := range ccs {
		for _, part := range strings.Split(cc, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(part), "=")
			val = strings.Trim(strings.TrimSpace(val), `"`)
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store":
				d.NoStore = true
			case "no-cache":
				d.NoCache = true
			case "private":
				d.Private = true
			case "public":
				d.Public = true
			case "must-revalidate", "proxy-revalidate":
				d.MustRevalidate = true
			case "max-age":
				d.MaxAge = seconds(val, 0)
			case "s-maxage":
				d.SMaxAge = seconds(val, 0)
			case "min-fresh":
				d.MinFresh = seconds(val, -1)
			}
		}
	}
	return d
}

// seconds parses delta-seconds; bad is returned for a malformed value.
func seconds(v string, bad time.Duration) time.Duration {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return bad
	}
	if n > 1<<31 { // RFC 9111 1.2.2: treat overflow as 2^31
		n = 1 << 31
	}
	return time.Duration(n) * time.Second
}

// Rule is what a policy rule allows to be cached.
type Rule struct {
	// TTL is the freshness of a response that states none; 0 means the
	// heuristic of 10% of the Last-Modified age.
	TTL time.Duration
	// Statuses that may be stored; empty means DefaultStatuses.
	Statuses []int
	// ContentTypes are media types ("application/json") or ranges
	// ("text/*"); empty means any.
	ContentTypes []string
	// MaxObjectSize bounds a stored body in bytes; 0 means
	// DefaultMaxObjectSize.
	MaxObjectSize int64
	// Shared makes one cache for every workload; otherwise each workload
	// has its own (a private cache in RFC 9111's terms).
	Shared bool
}

// DefaultStatuses are the statuses RFC 9110 15.1 calls heuristically
// cacheable.
var DefaultStatuses = []int{200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501}

// DefaultMaxObjectSize bounds a stored body when the rule says nothing.
const DefaultMaxObjectSize = 1 << 20

// MaxSize is the largest body the rule stores.
func (r *Rule) MaxSize() int64 {
	if r.MaxObjectSize > 0 {
		return r.MaxObjectSize
	}
	return DefaultMaxObjectSize
}

// Why a response is not stored: fixed strings tests and logs use.
const (
	NotGET          = "method is not GET"
	NoStore         = "no-store"
	StatusNotListed = "status not cacheable"
	Private         = "private response in a shared cache"
	Credentials     = "request carries credentials and the response is not public"
	SetCookie       = "Set-Cookie in a shared cache"
	VaryAll         = "Vary: *"
	TypeNotListed   = "content type not cacheable"
	TooLarge        = "larger than maxObjectSize"
	NeverFresh      = "no freshness and no validator"
)

// Storable reports whether the response (status, header h) to a request
// (method, header reqH) may be stored under r, and if not, why.
func (r *Rule) Storable(method string, reqH http.Header, status int, h http.Header, now time.Time) (bool, string) {
	if method != http.MethodGet {
		return false, NotGET
	}
	req, resp := ParseDirectives(reqH), ParseDirectives(h)
	statuses := r.Statuses
	if len(statuses) == 0 {
		statuses = DefaultStatuses
	}
	switch {
	case req.NoStore || resp.NoStore:
		return false, NoStore
	case !slices.Contains(statuses, status):
		return false, StatusNotListed
	case r.Shared && resp.Private:
		return false, Private
	case r.Shared && !resp.Public && (reqH.Get("Authorization") != "" || reqH.Get("Cookie") != ""):
		return false, Credentials
	case r.Shared && len(h.Values("Set-Cookie")) > 0:
		return false, SetCookie
	case varyAll(h):
		return false, VaryAll
	case !r.typeListed(h.Get("Content-Type")):
		return false, TypeNotListed
	}
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n > r.MaxSize() {
			return false, TooLarge
		}
	}
	if r.lifetime(resp, h, now) <= 0 && h.Get("ETag") == "" && h.Get("Last-Modified") == "" {
		return false, NeverFresh
	}
	return true, ""
}

func varyAll(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if strings.TrimSpace(f) == "*" {
				return true
			}
		}
	}
	return false
}

func (r *Rule) typeListed(ct string) bool {
	if len(r.ContentTypes) == 0 {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	for _, want := range r.ContentTypes {
		want = strings.ToLower(want)
		if want == mt || (strings.HasSuffix(want, "/*") && strings.HasPrefix(mt, want[:len(want)-1])) {
			return true
		}
	}
	return false
}

// maxHeuristic caps the Last-Modified heuristic.
const maxHeuristic = 24 * time.Hour

// Lifetime is the freshness lifetime of a response (RFC 9111 4.2.1) with
// header h, received at now when h has no Date.
func (r *Rule) Lifetime(h http.Header, now time.Time) time.Duration {
	return r.lifetime(ParseDirectives(h), h, now)
}

// lifetime is Lifetime with h's directives d already parsed.
func (r *Rule) lifetime(d Directives, h http.Header, now time.Time) time.Duration {
	switch {
	case r.Shared && d.SMaxAge >= 0:
		return d.SMaxAge
	case d.MaxAge >= 0:
		return d.MaxAge
	}
	date := dateOf(h, now)
	if ex := h.Get("Expires"); ex != "" {
		t, err := http.ParseTime(ex)
		if err != nil {
			return 0 // an invalid Expires ("0") means already expired
		}
		return max(t.Sub(date), 0)
	}
	if r.TTL > 0 {
		return r.TTL
	}
	if lm, err := http.ParseTime(h.Get("Last-Modified")); err == nil && lm.Before(date) {
		return min(date.Sub(lm)/10, maxHeuristic)
	}
	return 0
}

func dateOf(h http.Header, fallback time.Time) time.Time {
	if t, err := http.ParseTime(h.Get("Date")); err == nil {
		return t
	}
	return fallback
}
