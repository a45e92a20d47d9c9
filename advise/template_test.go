package advise

import (
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policy"
)

func TestTemplate(t *testing.T) {
	for _, tt := range []struct{ path, want string }{
		{"/", "/"},
		{"/v1/users", "/v1/users"},         // literal segments are kept
		{"/v1/users/12345", "/v1/users/*"}, // numeric id
		{"/v1/users/12345/orders/9?page=2", "/v1/users/*/orders/*"},                 // query dropped
		{"/objects/3c2a8f4e-1b7d-4f0e-9a6b-2d5c8e9f1a0b", "/objects/*"},             // UUID
		{"/git/commits/9fceb02d0ae598e95dc970b74767f19372d61af8", "/git/commits/*"}, // hash
		{"/v1/charges/ch_3MqLWb2eZvKYlo2C1Xa3Bv8x", "/v1/charges/*"},                // token
		{"/v1/api-reference-guide", "/v1/api-reference-guide"},                      // long but no digits
		{"/a/b/c/d/e/f/g/h", "/a/b/c/d/e/**"},                                       // deep trees
		{"/v1/../admin/%61b", "/admin/ab"},                                          // as the policy sees it
		{"/v1/users/42/", "/v1/users/*/"},                                           // trailing slash kept on a glob
		{"/files/what*ever", "/files/*"},                                            // glob syntax is never literal
	} {
		if got := Template(tt.path); got != tt.want {
			t.Errorf("Template(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestTemplatesFanout(t *testing.T) {
	var ps []string
	for _, n := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"} {
		ps = append(ps, "/users/"+n+"/profile")
	}
	ps = append(ps, "/health")
	got := Templates(ps)
	if want := []string{"/health", "/users/*/profile"}; !slices.Equal(got, want) {
		t.Fatalf("Templates = %q, want %q", got, want)
	}
}

// FuzzTemplate: a template is a valid policy path that matches the path
// it was made from, and templating is idempotent.
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"/", "/v1/users/42", "/a/b/c/d/e/f/g", "/x?y", "/%2e%2e/a", "//a//b/", "/a;b/c", "/**/x", "/[a]/\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		tpl := Template(p)
		doc := "version: 1\nrules: [{name: a, action: allow, destinations: {paths: [" + q(tpl) + "]}}]\n"
		e, err := policy.Parse([]byte(doc), "fuzz.yaml")
		if err != nil {
			t.Fatalf("Template(%q) = %q: not a valid policy path: %v", p, tpl, err)
		}
		_ = e
		clean := policy.CleanPath(p)
		ok := policy.MatchGlob(tpl, clean)
		if !strings.ContainsAny(tpl, "*?") {
			ok = tpl == "/" || clean == tpl || strings.HasPrefix(clean, strings.TrimSuffix(tpl, "/")+"/")
		}
		if !ok {
			t.Fatalf("Template(%q) = %q does not match %q", p, tpl, clean)
		}
		if again := Template(tpl); again != tpl {
			t.Fatalf("Template(Template(%q)) = %q, want %q", p, again, tpl)
		}
	})
}
