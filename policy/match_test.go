package policy

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

func TestMatchHost(t *testing.T) {
	for _, tt := range []struct {
		pattern, host string
		want          bool
	}{
		{"api.example.com", "api.example.com", true},
		{"api.example.com", "API.Example.COM.", true},
		{"api.example.com", "x.api.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "badexample.com", false},
		{"*.example.com", ".example.com", false},
		{"*", "anything.example", true},
		{"1.2.3.4", "1.2.3.4", true},
	} {
		if got := MatchHost(tt.pattern, tt.host); got != tt.want {
			t.Errorf("MatchHost(%q, %q) = %v", tt.pattern, tt.host, got)
		}
	}
}

func TestMatchGlob(t *testing.T) {
	for _, tt := range []struct {
		glob, name string
		want       bool
	}{
		{"/kubepods/**", "/kubepods/burstable/pod1/cri-x.scope", true},
		{"/kubepods/**", "/kubepods", true},
		{"/kubepods/**", "/kubepods.slice/x", false},
		{"/kubepods*/**", "/kubepods.slice/x", true},
		{"/a/*/c", "/a/b/c", true},
		{"/a/*/c", "/a/b/x/c", false},
		{"/a/**/c", "/a/b/x/c", true},
		{"/a/**/c", "/a/c", true},
		{"/a/**/**/c", "/a/c", true},
		{"/usr/bin/python3*", "/usr/bin/python3.11", true},
		{"/usr/bin/python?", "/usr/bin/python3", true},
		{"/usr/bin/python?", "/usr/bin/python31", false},
		{"/a/[", "/a/[", false}, // malformed class never matches
	} {
		if got := MatchGlob(tt.glob, tt.name); got != tt.want {
			t.Errorf("MatchGlob(%q, %q) = %v", tt.glob, tt.name, got)
		}
	}
}

func TestMatchPath(t *testing.T) {
	for _, tt := range []struct {
		pattern, path string
		want          bool
	}{
		{"/", "/anything", true},
		{"/v1", "/v1", true},
		{"/v1", "/v1/", true},
		{"/v1", "/v1/x/y", true},
		{"/v1", "/v1x", false},
		{"/v1/", "/v1/x", true},
		{"/v1/", "/v1", false},
		{"/v1/*", "/v1/x", true},
		{"/v1/*", "/v1/x/y", false},
		{"/v1/**", "/v1/x/y", true},
		{"/v1/*/issues", "/v1/r/issues", true},
	} {
		if got := matchPath(tt.pattern, tt.path); got != tt.want {
			t.Errorf("matchPath(%q, %q) = %v", tt.pattern, tt.path, got)
		}
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "/",
		"/":                "/",
		"/a/b/":            "/a/b/",
		"/a/../admin":      "/admin",
		"/a/./b":           "/a/b",
		"//admin//x":       "/admin/x",
		"/%61dmin":         "/admin",
		"/a%2Fb":           "/a/b",
		"/a?x=/admin":      "/a",
		"/bad%zzescape":    "/bad%zzescape",
		"/../../etc":       "/etc",
		"relative/path":    "/relative/path",
		"/v1/%2e%2e/admin": "/admin",
		// Path parameters (Tomcat, Spring, Jetty strip them).
		"/admin;x":              "/admin",
		"/admin;x/users":        "/admin/users",
		"/a%3bb/admin":          "/a/admin",
		"/admin%3Bjsessionid=1": "/admin",
		"/;x/admin":             "/admin",
		"/v1/..;/admin":         "/admin",
		"/admin;a=1;b=2/":       "/admin/",
		"/v1/x;y/../admin":      "/v1/admin",
	} {
		if got := cleanPath(in); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPathParametersDoNotBypassDeny: what a user sees, a deny rule on
// /admin holding for the path-parameter forms a servlet container routes
// to /admin.
func TestPathParametersDoNotBypassDeny(t *testing.T) {
	e, err := Parse([]byte("version: 1\nrules: [{name: no-admin, action: deny, destinations: {paths: [/admin]}}]\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for path, denied := range map[string]bool{
		"/admin":            true,
		"/admin;x":          true,
		"/admin;x/users":    true,
		"/admin%3bx/users":  true,
		"/v1/..;/admin":     true,
		"/administrator;x":  false,
		"/public;admin":     false,
		"/public/x;/admin2": false,
	} {
		d := e.Request(t.Context(), &Request{Conn: &Conn{Addrs: public}, Host: "x.example", Method: "GET", Path: path})
		if d.Denied() != denied || (denied && d.Rule != "no-admin") {
			t.Errorf("%s: denied=%v rule=%q, want denied=%v", path, d.Denied(), d.Rule, denied)
		}
	}
}

// matchHostSpec is MatchHost's rule written plainly, one pattern at a
// time: the reference the compiled hostSet is checked against.
func matchHostSpec(pattern, host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	if pattern == "*" {
		return true
	}
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, suffix) && len(host) > len(suffix)
	}
	return host == pattern
}

// A set of patterns matches a host exactly when one of its patterns
// does by the plain rule: the compiled set (exact names in a map,
// wildcards as suffixes) is only a faster way to ask each pattern.
func FuzzHostSetIsAnyPattern(f *testing.F) {
	f.Add("api.example.com,*.example.com", "A.Example.com.")
	f.Add("*,x", "")
	f.Add("*.,*x.y", "ax.y")
	f.Add(",Dns.Google.", "dns.google")
	f.Add("*.Example.COM", "example.com")
	f.Fuzz(func(t *testing.T, list, host string) {
		patterns := strings.Split(list, ",")
		want := false
		for _, p := range patterns {
			want = want || matchHostSpec(p, host)
		}
		if got := newHostSet(patterns).match(host); got != want {
			t.Errorf("newHostSet(%q).match(%q) = %v, but the patterns one by one say %v", patterns, host, got, want)
		}
	})
}

// The per-request cost of the policy with the public resolver list
// checked, as bench-peers runs it (allow by default, a test range
// exempt from the SSRF guard).
func BenchmarkRequestDefaultAllow(b *testing.B) {
	e, err := Parse([]byte("version: 1\nmode: enforce\nssrf:\n  allowCIDRs: [\"198.18.0.0/15\"]\ndefaults:\n  action: allow\n"), "b.yaml")
	if err != nil {
		b.Fatal(err)
	}
	r := req(workload.Identity{Cgroup: "/w/a"}, "api.example")
	r.Conn.Addrs = []netip.Addr{netip.MustParseAddr("198.19.254.2")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Request(ctx, r); d.Denied() {
			b.Fatalf("denied: %+v", d)
		}
	}
}
