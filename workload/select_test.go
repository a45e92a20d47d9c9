package workload

import (
	"path"
	"strings"
	"testing"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"web", "web", true},
		{"web", "web2", false},
		{"web-*", "web-0", true},
		{"web-*", "web", false},
		{"*", "", true},
		{"registry.example.com/team/*", "registry.example.com/team/api:1.2", true},
		{"registry.example.com/team/*", "registry.example.com/other/api", false},
		{"docker.io/library/python:*", "docker.io/library/python:3.12-slim", true},
		{"*python*", "docker.io/library/python:3", true},
		{"team-?", "team-a", true},
		{"team-?", "team-ab", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"**", "anything/at:all", true},
	}
	for _, tt := range tests {
		if got := Glob(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func TestSelectorMatch(t *testing.T) {
	pod := &Identity{Namespace: "shop", Pod: "web-0", Container: "api", Image: "registry.example.com/shop/api:1.2",
		Labels: map[string]string{"app": "web", "tier": "front"}}
	bare := &Identity{ContainerID: strings.Repeat("a", 64)} // a container the runtime did not name
	tests := []struct {
		name      string
		s         Selector
		pod, bare bool
	}{
		{"empty selects all", Selector{}, true, true},
		{"namespace", Selector{Namespaces: []string{"prod", "shop"}}, true, false},
		{"namespace glob", Selector{Namespaces: []string{"sh*"}}, true, false},
		{"unknown namespace is not in *", Selector{Namespaces: []string{"*"}}, true, false},
		{"labels all", Selector{Labels: map[string]string{"app": "web", "tier": "front"}}, true, false},
		{"labels one wrong", Selector{Labels: map[string]string{"app": "web", "tier": "back"}}, false, false},
		{"label value glob", Selector{Labels: map[string]string{"tier": "fr*"}}, true, false},
		{"container", Selector{Containers: []string{"api"}}, true, false},
		{"image", Selector{Images: []string{"registry.example.com/shop/*"}}, true, false},
		{"fields ANDed", Selector{Namespaces: []string{"shop"}, Images: []string{"nginx*"}}, false, false},
	}
	for _, tt := range tests {
		if got := tt.s.Match(pod); got != tt.pod {
			t.Errorf("%s: Match(pod) = %v, want %v", tt.name, got, tt.pod)
		}
		if got := tt.s.Match(bare); got != tt.bare {
			t.Errorf("%s: Match(bare) = %v, want %v", tt.name, got, tt.bare)
		}
	}
}

func TestNameByContainer(t *testing.T) {
	id := Identity{ContainerID: strings.Repeat("a", 64), Container: "web"}
	if got := id.Name(); got != "container:web" {
		t.Fatalf("Name %q", got)
	}
	id.Namespace, id.Pod = "shop", "web-0"
	if got := id.Name(); got != "shop/web-0" {
		t.Fatalf("Name %q", got)
	}
}

// FuzzGlob: Glob agrees with path.Match where both apply (patterns of
// literals, * and ? over strings without "/"), and never panics.
func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{{"web-*", "web-0"}, {"a*b*c", "axxbyyc"}, {"?", "x"}, {"*:*", "python:3"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := Glob(pattern, s)
		if strings.ContainsAny(pattern, "[]\\/") || strings.Contains(s, "/") || len(pattern) > 64 || len(s) > 64 {
			return
		}
		for _, c := range s {
			if c >= 0x80 { // path.Match's ? is a rune, Glob's a byte
				return
			}
		}
		want, err := path.Match(pattern, s)
		if err == nil && got != want {
			t.Fatalf("Glob(%q, %q) = %v, path.Match says %v", pattern, s, got, want)
		}
	})
}
