package cache

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// hdr builds a header from "Name: value" lines.
func hdr(lines ...string) http.Header {
	h := http.Header{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, ":")
		h.Add(k, strings.TrimSpace(v))
	}
	return h
}

func date(d time.Duration) string { return t0.Add(d).Format(http.TimeFormat) }

func TestStorable(t *testing.T) {
	private := &Rule{}
	shared := &Rule{Shared: true}
	jsonOnly := &Rule{ContentTypes: []string{"application/json", "text/*"}, MaxObjectSize: 10}
	for _, tc := range []struct {
		name   string
		rule   *Rule
		method string
		req    http.Header
		status int
		resp   http.Header
		why    string // "" when storable
	}{
		{"max-age GET", private, "GET", hdr(), 200, hdr("Cache-Control: max-age=60"), ""},
		{"POST is never stored", private, "POST", hdr(), 200, hdr("Cache-Control: max-age=60"), NotGET},
		{"HEAD has no body to store", private, "HEAD", hdr(), 200, hdr("Cache-Control: max-age=60"), NotGET},
		{"response no-store", private, "GET", hdr(), 200, hdr("Cache-Control: max-age=60, no-store"), NoStore},
		{"request no-store", private, "GET", hdr("Cache-Control: no-store"), 200, hdr("Cache-Control: max-age=60"), NoStore},
		{"a 500 is not listed", private, "GET", hdr(), 500, hdr("Cache-Control: max-age=60"), StatusNotListed},
		{"a 404 is heuristically cacheable", private, "GET", hdr(), 404, hdr("Cache-Control: max-age=60"), ""},
		{"private in a workload's own cache", private, "GET", hdr(), 200, hdr("Cache-Control: private, max-age=60"), ""},
		{"private in a shared cache", shared, "GET", hdr(), 200, hdr("Cache-Control: private, max-age=60"), Private},
		{"Authorization in a shared cache", shared, "GET", hdr("Authorization: Bearer x"), 200, hdr("Cache-Control: max-age=60"), Credentials},
		{"Cookie in a shared cache", shared, "GET", hdr("Cookie: a=b"), 200, hdr("Cache-Control: max-age=60"), Credentials},
		{"Authorization with public", shared, "GET", hdr("Authorization: Bearer x"), 200, hdr("Cache-Control: public, max-age=60"), ""},
		{"Authorization in a workload's own cache", private, "GET", hdr("Authorization: Bearer x"), 200, hdr("Cache-Control: max-age=60"), ""},
		{"Set-Cookie in a shared cache", shared, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Set-Cookie: s=1"), SetCookie},
		{"Vary: *", private, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Vary: Accept, *"), VaryAll},
		{"listed type", jsonOnly, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Content-Type: application/json; charset=utf-8"), ""},
		{"type range", jsonOnly, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Content-Type: text/plain"), ""},
		{"type not listed", jsonOnly, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Content-Type: image/png"), TypeNotListed},
		{"too large", jsonOnly, "GET", hdr(), 200, hdr("Cache-Control: max-age=60", "Content-Type: text/plain", "Content-Length: 11"), TooLarge},
		{"no freshness, no validator", private, "GET", hdr(), 200, hdr(), NeverFresh},
		{"max-age=0 with an ETag: stored to revalidate", private, "GET", hdr(), 200, hdr("Cache-Control: max-age=0", `ETag: "v1"`), ""},
		{"no-cache with a Last-Modified", private, "GET", hdr(), 200, hdr("Cache-Control: no-cache", "Last-Modified: "+date(-time.Hour)), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := tc.rule.Storable(tc.method, tc.req, tc.status, tc.resp, t0)
			if ok != (tc.why == "") || why != tc.why {
				t.Fatalf("Storable = %v %q, want %q", ok, why, tc.why)
			}
		})
	}
}

func TestLifetime(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
		resp http.Header
		want time.Duration
	}{
		{"max-age", Rule{}, hdr("Cache-Control: max-age=60"), time.Minute},
		{"s-maxage wins in a shared cache", Rule{Shared: true}, hdr("Cache-Control: max-age=60, s-maxage=5"), 5 * time.Second},
		{"s-maxage is ignored in a private cache", Rule{}, hdr("Cache-Control: max-age=60, s-maxage=5"), time.Minute},
		{"max-age wins over Expires", Rule{}, hdr("Cache-Control: max-age=60", "Date: "+date(0), "Expires: "+date(time.Hour)), time.Minute},
		{"Expires minus Date", Rule{}, hdr("Date: "+date(0), "Expires: "+date(time.Hour)), time.Hour},
		{"Expires in the past", Rule{}, hdr("Date: "+date(0), "Expires: "+date(-time.Hour)), 0},
		{"invalid Expires means expired", Rule{TTL: time.Hour}, hdr("Expires: 0"), 0},
		{"malformed max-age means stale", Rule{TTL: time.Hour}, hdr("Cache-Control: max-age=soon"), 0},
		{"the rule's ttl when the response states none", Rule{TTL: 5 * time.Minute}, hdr("Date: " + date(0)), 5 * time.Minute},
		{"10% of the Last-Modified age", Rule{}, hdr("Date: "+date(0), "Last-Modified: "+date(-10*time.Hour)), time.Hour},
		{"the heuristic is at most a day", Rule{}, hdr("Date: "+date(0), "Last-Modified: "+date(-100*24*time.Hour)), 24 * time.Hour},
		{"nothing at all", Rule{}, hdr(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.rule.Lifetime(tc.resp, t0); got != tc.want {
				t.Fatalf("Lifetime = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFresh(t *testing.T) {
	r := &Rule{}
	for _, tc := range []struct {
		name string
		resp http.Header
		req  http.Header
		at   time.Duration // after the response arrived
		want bool
	}{
		{"within max-age", hdr("Cache-Control: max-age=60", "Date: "+date(0)), hdr(), 30 * time.Second, true},
		{"past max-age", hdr("Cache-Control: max-age=60", "Date: "+date(0)), hdr(), 61 * time.Second, false},
		{"an Age header counts", hdr("Cache-Control: max-age=60", "Date: "+date(0), "Age: 50"), hdr(), 20 * time.Second, false},
		{"response no-cache always revalidates", hdr("Cache-Control: no-cache, max-age=60"), hdr(), 0, false},
		{"request no-cache revalidates", hdr("Cache-Control: max-age=60"), hdr("Cache-Control: no-cache"), 0, false},
		{"Pragma: no-cache without Cache-Control", hdr("Cache-Control: max-age=60"), hdr("Pragma: no-cache"), 0, false},
		{"request max-age shorter than the age", hdr("Cache-Control: max-age=600"), hdr("Cache-Control: max-age=10"), 20 * time.Second, false},
		{"request min-fresh beyond what is left", hdr("Cache-Control: max-age=60"), hdr("Cache-Control: min-fresh=50"), 20 * time.Second, false},
		{"request min-fresh within what is left", hdr("Cache-Control: max-age=60"), hdr("Cache-Control: min-fresh=30"), 20 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEntry(r, hdr(), 200, tc.resp, nil, t0, t0)
			if got := e.Fresh(tc.req, t0.Add(tc.at)); got != tc.want {
				t.Fatalf("Fresh = %v, want %v (age %v, lifetime %v)", got, tc.want, e.Age(t0.Add(tc.at)), e.Lifetime)
			}
		})
	}
}

// The age of RFC 9111 4.2.3: the larger of the apparent age and the Age
// header plus the response delay, plus the time resident.
func TestAge(t *testing.T) {
	e := NewEntry(&Rule{}, hdr(), 200, hdr("Date: "+date(-10*time.Second), "Age: 3"), nil, t0.Add(-2*time.Second), t0)
	// apparent 10s; corrected 3s+2s; resident 5s
	if got := e.Age(t0.Add(5 * time.Second)); got != 15*time.Second {
		t.Fatalf("Age = %v, want 15s", got)
	}
}

func TestVary(t *testing.T) {
	e := NewEntry(&Rule{}, hdr("Accept: application/json", "Accept-Language: en"), 200,
		hdr("Cache-Control: max-age=60", "Vary: accept, Accept-Language"), nil, t0, t0)
	for _, tc := range []struct {
		req  http.Header
		want bool
	}{
		{hdr("Accept: application/json", "Accept-Language: en"), true},
		{hdr("Accept:   application/json", "Accept-Language: en", "X-Other: 1"), true},
		{hdr("Accept: text/html", "Accept-Language: en"), false},
		{hdr("Accept: application/json"), false},
	} {
		if got := e.Matches(tc.req); got != tc.want {
			t.Errorf("Matches(%v) = %v, want %v", tc.req, got, tc.want)
		}
	}
}

// A 304 refreshes the stored response: its fields replace the stored
// ones except the body's framing, and the age starts again.
func TestRefresh(t *testing.T) {
	r := &Rule{}
	old := NewEntry(r, hdr(), 200, hdr("Cache-Control: max-age=60", `ETag: "v1"`, "Content-Length: 5", "X-Old: 1"), []byte("hello"), t0, t0)
	if !old.Conditional(http.Header{}) {
		t.Fatal("an entry with an ETag sets no conditional")
	}
	later := t0.Add(2 * time.Minute)
	if old.Fresh(hdr(), later) {
		t.Fatal("entry still fresh after its max-age")
	}
	n := old.Refresh(r, hdr("Cache-Control: max-age=120", `ETag: "v1"`, "Content-Length: 0", "X-New: 2"), later, later)
	if !n.Fresh(hdr(), later.Add(time.Minute)) {
		t.Error("refreshed entry is not fresh under the 304's max-age")
	}
	if n.Header.Get("Content-Length") != "5" || n.Header.Get("X-Old") != "1" || n.Header.Get("X-New") != "2" || string(n.Body) != "hello" {
		t.Errorf("refreshed entry = %v %q", n.Header, n.Body)
	}
	if old.Header.Get("X-New") != "" {
		t.Error("Refresh changed the stored entry")
	}
}

func TestNotModified(t *testing.T) {
	e := NewEntry(&Rule{}, hdr(), 200, hdr(`ETag: W/"v1"`, "Last-Modified: "+date(-time.Hour)), nil, t0, t0)
	for _, tc := range []struct {
		req  http.Header
		want bool
	}{
		{hdr(`If-None-Match: "v0", "v1"`), true},
		{hdr(`If-None-Match: *`), true},
		{hdr(`If-None-Match: "v2"`, "If-Modified-Since: "+date(0)), false}, // If-None-Match wins
		{hdr("If-Modified-Since: " + date(0)), true},
		{hdr("If-Modified-Since: " + date(-2*time.Hour)), false},
		{hdr(), false},
	} {
		if got := e.NotModified(tc.req); got != tc.want {
			t.Errorf("NotModified(%v) = %v, want %v", tc.req, got, tc.want)
		}
	}
}

func TestStoreEvictsLeastRecentlyUsed(t *testing.T) {
	body := make([]byte, 1000)
	e := &Entry{Header: http.Header{}, Body: body}
	one := e.size("a")
	s := NewStore(3 * one)
	s.Put("a", e)
	s.Put("b", e)
	s.Put("c", e)
	s.Get("a") // a is now the most recent: b goes first
	s.Put("d", e)
	for k, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := s.Get(k); ok != want {
			t.Errorf("after eviction, %s present = %v, want %v", k, ok, want)
		}
	}
	if st := s.Stats(); st.Entries != 3 || st.Bytes != 3*one {
		t.Errorf("Stats = %+v", st)
	}
	s.Put("huge", &Entry{Header: http.Header{}, Body: make([]byte, 4*one)})
	if _, ok := s.Get("huge"); ok {
		t.Error("an entry larger than the store was kept")
	}
	s.Put("a", &Entry{Header: http.Header{}}) // replacing frees the old size
	s.Remove("c")
	if st := s.Stats(); st.Entries != 2 {
		t.Errorf("Stats after replace and remove = %+v", st)
	}
}
