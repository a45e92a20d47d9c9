package audit_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// constants returns the string constants of file whose names start with
// prefix, by name.
func constants(t *testing.T, file, prefix string) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, prefix) || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue // slog.TimeKey and friends
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out[n.Name] = v
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s constants in %s", prefix, file)
	}
	return out
}

// TestKeysStyle: every key is snake_case and names one thing.
func TestKeysStyle(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := map[string]string{}
	for name, v := range constants(t, "keys.go", "Key") {
		if !snake.MatchString(v) {
			t.Errorf("%s = %q is not snake_case", name, v)
		}
		if prev, dup := seen[v]; dup {
			t.Errorf("%s and %s are both %q: one constant per key", name, prev, v)
		}
		seen[v] = name
	}
}

// TestReasonsStyle: every reason is a distinct lowercase phrase (a name
// such as SNI may open it), not a snake_case identifier or a sentence.
func TestReasonsStyle(t *testing.T) {
	seen := map[string]string{}
	for name, v := range constants(t, "reasons.go", "Reason") {
		first, _, _ := strings.Cut(v, " ")
		switch {
		case !strings.Contains(v, " "):
			t.Errorf("%s = %q is not a phrase", name, v)
		case strings.HasSuffix(v, "."):
			t.Errorf("%s = %q ends with a period", name, v)
		case unicode.IsUpper(rune(v[0])) && strings.ToUpper(first) != first:
			t.Errorf("%s = %q is capitalized", name, v)
		}
		if prev, dup := seen[v]; dup {
			t.Errorf("%s and %s are both %q", name, prev, v)
		}
		seen[v] = name
	}
}
