package audit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"strconv"
	"testing"
)

// TestKeysNeedNoEscaping: the JSON line appends keys as they are (no
// quoting pass), which is right only while every key of keys.go is plain
// ASCII; a key with a quote, backslash or control byte must fail here.
func TestKeysNeedNoEscaping(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "keys.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	plain := regexp.MustCompile(`^[a-z0-9_.]+$`)
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		vs, ok := node.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, name := range vs.Names {
			if len(name.Name) < 4 || name.Name[:3] != "Key" || i >= len(vs.Values) {
				continue
			}
			lit, ok := vs.Values[i].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				continue
			}
			v, _ := strconv.Unquote(lit.Value)
			n++
			if !plain.MatchString(v) {
				t.Errorf("%s = %q: not plain ASCII, the JSON line would need to escape it", name.Name, v)
			}
		}
		return true
	})
	if n < 50 {
		t.Fatalf("found %d keys in keys.go, want them all (the parse missed them)", n)
	}
}
