package agent

import "testing"

func TestGlob(t *testing.T) {
	tests := []struct {
		pat, path string
		want      bool
	}{
		{"/kubepods.slice/**", "/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope", true},
		{"/kubepods.slice/**", "/kubepods.slice", true},
		{"/kubepods.slice/**", "/system.slice", false},
		{"/kubepods.slice/*", "/kubepods.slice/a", true},
		{"/kubepods.slice/*", "/kubepods.slice/a/b", false},
		{"/kubepods.slice/*", "/kubepods.slice", false},
		{"/**/cri-containerd-*.scope", "/kubepods.slice/x.slice/cri-containerd-ab.scope", true},
		{"/**/cri-containerd-*.scope", "/cri-containerd-ab.scope", true},
		{"/**/cri-containerd-*.scope", "/kubepods.slice/x.slice/crio-ab.scope", false},
		{"/a/**/b", "/a/b", true},
		{"/a/**/b", "/a/x/y/b", true},
		{"/a/**/b", "/a/x/y/c", false},
		{"/mcp-*", "/mcp-github", true},
		{"/mcp-*", "/mcp-github/child", false},
		{"/mcp-?", "/mcp-1", true},
		{"/exact", "/exact", true},
		{"/exact", "/exact/", true},
		{"/exact", "/exactly", false},
		{"/**", "/", true},
		{"/**/**", "/a/b", true},
	}
	for _, tt := range tests {
		g, err := compileGlob(tt.pat)
		if err != nil {
			t.Fatalf("compileGlob(%q): %v", tt.pat, err)
		}
		if got := g.Match(tt.path); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pat, tt.path, got, tt.want)
		}
	}
}

func TestCompileGlobErrors(t *testing.T) {
	for _, p := range []string{"kubepods.slice/**", "/a**/b", "/[", ""} {
		if _, err := compileGlob(p); err == nil {
			t.Errorf("compileGlob(%q): no error", p)
		}
	}
}

func FuzzGlob(f *testing.F) {
	f.Add("/kubepods.slice/**", "/kubepods.slice/a/b")
	f.Add("/**/x-*.scope", "/a/x-1.scope")
	f.Fuzz(func(t *testing.T, pat, p string) {
		g, err := compileGlob(pat)
		if err != nil {
			return
		}
		_ = g.Match(p)
		// A glob without meta characters matches its own path.
		plain := true
		for _, c := range pat {
			if c == '*' || c == '?' || c == '[' || c == '\\' {
				plain = false
			}
		}
		if plain && !g.Match(pat) {
			t.Fatalf("%q does not match itself", pat)
		}
	})
}
