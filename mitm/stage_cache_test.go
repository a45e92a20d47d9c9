package mitm

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/policy"
)

// upReply is what the test upstream answers.
type upReply struct {
	code int
	hdr  []string // "Name: value"
	body string
}

// cacheStep is one request through the cache stage, and what it must
// give: the upstream is asked only when up is set (else the stage must
// answer from the cache).
type cacheStep struct {
	wl     string // the workload's cgroup
	method string
	hdr    []string
	up     *upReply
	// wantCond is the If-None-Match the upstream must see ("" for none).
	wantCond   string
	wantStatus string // X-Cache-Status
	wantCode   int
	wantBody   string
}

func headerOf(lines []string) http.Header {
	h := http.Header{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, ":")
		h.Add(k, strings.TrimSpace(v))
	}
	return h
}

// runCacheStep sends one request through the stage the way the exchange
// does: Request, then (when it did not answer) the upstream, Response and
// the client reading the body to its end.
func runCacheStep(t *testing.T, f *flow, rule *cache.Rule, s cacheStep) {
	t.Helper()
	f.id.Cgroup = s.wl
	r := httptest.NewRequest(s.method, "https://api.test/v1/items?page=2", nil)
	r.Header = headerOf(s.hdr)
	x := stageExchange(f, r)
	x.t = &target{host: "api.test", port: 443, useTLS: true}
	x.host = "api.test"
	x.Decision = policy.Decision{Rule: "api", Cache: rule}
	var st cacheStage
	a := st.Request(x)
	var code int
	var h http.Header
	var body string
	switch {
	case a != nil && s.up != nil:
		t.Fatalf("answered %d from the cache, want the upstream asked", a.Status)
	case a == nil && s.up == nil:
		t.Fatalf("the upstream was asked, want an answer from the cache")
	case a != nil:
		code, h, body = a.Status, a.Header, string(a.Body)
	default:
		if got := x.Req.Header.Get("If-None-Match"); got != s.wantCond {
			t.Fatalf("upstream saw If-None-Match %q, want %q", got, s.wantCond)
		}
		resp := &http.Response{StatusCode: s.up.code, Header: headerOf(s.up.hdr), Body: io.NopCloser(strings.NewReader(s.up.body)), ContentLength: -1}
		if s.method == http.MethodHead {
			resp.Body = http.NoBody
		}
		if a := st.Response(x, resp); a != nil {
			code, h, body = a.Status, a.Header, string(a.Body)
			break
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		code, h, body = resp.StatusCode, resp.Header, string(b)
	}
	if got := h.Get(HeaderCacheStatus); got != s.wantStatus || code != s.wantCode || body != s.wantBody {
		t.Fatalf("got %s %d %q, want %s %d %q", got, code, body, s.wantStatus, s.wantCode, s.wantBody)
	}
	if x.Record.Cache != strings.ToLower(s.wantStatus) {
		t.Fatalf("record cache %q, want %q", x.Record.Cache, strings.ToLower(s.wantStatus))
	}
}

func TestCacheStage(t *testing.T) {
	fresh := &upReply{200, []string{"Cache-Control: max-age=60", `ETag: "v1"`, "Content-Type: application/json"}, "v1"}
	staleTagged := &upReply{200, []string{"Cache-Control: max-age=0", `ETag: "v1"`}, "v1"}
	get := func(wl string, up *upReply, status string, body string, hdr ...string) cacheStep {
		return cacheStep{wl: wl, method: "GET", hdr: hdr, up: up, wantStatus: status, wantCode: 200, wantBody: body}
	}
	for _, tc := range []struct {
		name  string
		rule  cache.Rule
		steps []cacheStep
	}{
		{"a fresh response answers the next request without the upstream", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			get("/a", nil, "Hit", "v1"),
		}},
		{"no-store is never stored", cache.Rule{}, []cacheStep{
			get("/a", &upReply{200, []string{"Cache-Control: no-store, max-age=60"}, "v1"}, "Miss", "v1"),
			get("/a", &upReply{200, nil, "v2"}, "Miss", "v2"),
		}},
		{"a stale response is revalidated and a 304 refreshes it", cache.Rule{}, []cacheStep{
			get("/a", staleTagged, "Miss", "v1"),
			{wl: "/a", method: "GET", up: &upReply{304, []string{"Cache-Control: max-age=60", `ETag: "v1"`}, ""}, wantCond: `"v1"`,
				wantStatus: "Revalidated", wantCode: 200, wantBody: "v1"},
			get("/a", nil, "Hit", "v1"),
		}},
		{"a stale response replaced by a new one", cache.Rule{}, []cacheStep{
			get("/a", staleTagged, "Miss", "v1"),
			{wl: "/a", method: "GET", up: &upReply{200, []string{"Cache-Control: max-age=60", `ETag: "v2"`}, "v2"}, wantCond: `"v1"`,
				wantStatus: "Expired", wantCode: 200, wantBody: "v2"},
			get("/a", nil, "Hit", "v2"),
		}},
		{"each workload has its own cache", cache.Rule{}, []cacheStep{
			get("/a", &upReply{200, []string{"Cache-Control: private, max-age=60"}, "a's"}, "Miss", "a's"),
			get("/b", &upReply{200, []string{"Cache-Control: private, max-age=60"}, "b's"}, "Miss", "b's"),
			get("/a", nil, "Hit", "a's"),
		}},
		{"a shared cache serves every workload", cache.Rule{Shared: true}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			get("/b", nil, "Hit", "v1"),
		}},
		{"a shared cache never stores a private response", cache.Rule{Shared: true}, []cacheStep{
			get("/a", &upReply{200, []string{"Cache-Control: private, max-age=60"}, "a's"}, "Miss", "a's"),
			get("/b", &upReply{200, []string{"Cache-Control: private, max-age=60"}, "b's"}, "Miss", "b's"),
		}},
		{"a shared cache stores a response to Authorization only if public", cache.Rule{Shared: true}, []cacheStep{
			get("/a", fresh, "Miss", "v1", "Authorization: Bearer a"),
			get("/b", &upReply{200, []string{"Cache-Control: public, max-age=60"}, "pub"}, "Miss", "pub", "Authorization: Bearer b"),
			get("/c", nil, "Hit", "pub"),
		}},
		{"POST bypasses the cache and drops what it stored", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			{wl: "/a", method: "POST", up: &upReply{201, nil, "made"}, wantStatus: "Bypass", wantCode: 201, wantBody: "made"},
			get("/a", fresh, "Miss", "v1"),
		}},
		{"HEAD is answered from a stored GET", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			{wl: "/a", method: "HEAD", wantStatus: "Hit", wantCode: 200, wantBody: ""},
		}},
		{"a client's matching If-None-Match gets a 304 from the cache", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			{wl: "/a", method: "GET", hdr: []string{`If-None-Match: "v1"`}, wantStatus: "Hit", wantCode: 304, wantBody: ""},
		}},
		{"a request with no-cache revalidates", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			{wl: "/a", method: "GET", hdr: []string{"Cache-Control: no-cache"}, up: &upReply{304, nil, ""}, wantCond: `"v1"`,
				wantStatus: "Revalidated", wantCode: 200, wantBody: "v1"},
		}},
		{"a body over maxObjectSize is streamed, not stored", cache.Rule{MaxObjectSize: 3}, []cacheStep{
			get("/a", &upReply{200, []string{"Cache-Control: max-age=60"}, "long"}, "Miss", "long"),
			get("/a", &upReply{200, []string{"Cache-Control: max-age=60"}, "long"}, "Miss", "long"),
		}},
		{"a content type not listed is not stored", cache.Rule{ContentTypes: []string{"text/*"}}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			get("/a", fresh, "Miss", "v1"),
		}},
		{"a request that differs in a Vary field misses", cache.Rule{}, []cacheStep{
			get("/a", &upReply{200, []string{"Cache-Control: max-age=60", "Vary: Accept"}, "json"}, "Miss", "json", "Accept: application/json"),
			get("/a", &upReply{200, []string{"Cache-Control: max-age=60", "Vary: Accept"}, "html"}, "Miss", "html", "Accept: text/html"),
			get("/a", nil, "Hit", "html", "Accept: text/html"),
		}},
		{"a Range request bypasses", cache.Rule{}, []cacheStep{
			get("/a", fresh, "Miss", "v1"),
			{wl: "/a", method: "GET", hdr: []string{"Range: bytes=0-0"}, up: &upReply{206, nil, "v"}, wantStatus: "Bypass", wantCode: 206, wantBody: "v"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			rule := tc.rule
			for i, s := range tc.steps {
				t.Run(strconv.Itoa(i), func(t *testing.T) { runCacheStep(t, f, &rule, s) })
			}
		})
	}
}

// Without a cache rule the stage does nothing and says nothing.
func TestCacheStageWithoutRule(t *testing.T) {
	f := stageFlow(t, nil)
	x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/", nil))
	x.t = &target{host: "api.test", port: 443, useTLS: true}
	if a := (cacheStage{}).Request(x); a != nil || x.cache != nil || x.Record.Cache != "" {
		t.Fatalf("answer %+v, state %+v, record %q", a, x.cache, x.Record.Cache)
	}
	resp := &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}
	if a := (cacheStage{}).Response(x, resp); a != nil || resp.Header.Get(HeaderCacheStatus) != "" {
		t.Fatalf("answer %+v, header %v", a, resp.Header)
	}
}

// A body that ends in an error (a cut, an upstream failing) is not
// stored, nor one shorter than its Content-Length.
func TestStoreBodyStoresOnlyWholeBodies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   io.Reader
		want   int64
		stored bool
	}{
		{"whole, length unknown", strings.NewReader("hello"), -1, true},
		{"whole, length declared", strings.NewReader("hello"), 5, true},
		{"shorter than declared", strings.NewReader("hell"), 5, false},
		{"ends in an error", io.MultiReader(strings.NewReader("he"), errReader{}), -1, false},
		{"over the bound", strings.NewReader("hello world"), -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stored := false
			b := newStoreBody(io.NopCloser(tc.body), 8, tc.want, func(got []byte) { stored = string(got) == "hello" })
			_, _ = io.ReadAll(b)
			if stored != tc.stored {
				t.Fatalf("stored = %v, want %v", stored, tc.stored)
			}
		})
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
