package mcp

import "testing"

func TestPathLookup(t *testing.T) {
	args := `{"to":[{"address":"a@x.test"},{"address":"b@x.test"}],"bcc":"spy@evil.test","cc":null,"n":3,"ok":true,
		"x-header":{"k":"v"},"dup":"first","dup":"last","empty":""}`
	for _, c := range []struct {
		path, want string
		ok         bool
	}{
		{"$.bcc", "spy@evil.test", true},
		{"$.to[1].address", "b@x.test", true},
		{"$.to[2].address", "", false},
		{"$.cc", "", false}, // null is not set
		{"$.missing", "", false},
		{"$.n", "3", true},
		{"$.ok", "true", true},
		{"$['x-header'].k", "v", true},
		{"$['x-header']", `{"k":"v"}`, true},
		{"$.dup", "last", true}, // JSON.parse: the last duplicate wins
		{"$.empty", "", true},
		{"$.bcc.x", "", false},
		{"$.to[0]", `{"address":"a@x.test"}`, true},
		{"$", "", true},
	} {
		p, err := ParsePath(c.path)
		if err != nil {
			t.Fatalf("ParsePath(%q): %v", c.path, err)
		}
		got, ok := p.Lookup([]byte(args))
		if c.path == "$" {
			if !ok {
				t.Errorf("$ not found")
			}
			continue
		}
		if got != c.want || ok != c.ok {
			t.Errorf("%s = %q, %v; want %q, %v", c.path, got, ok, c.want, c.ok)
		}
	}
}

func TestParsePathErrors(t *testing.T) {
	for _, s := range []string{"bcc", ".bcc", "$.", "$..bcc", "$[", "$[x]", "$[-1]", "$['a", "$.a b[", "$*"} {
		if _, err := ParsePath(s); err == nil {
			t.Errorf("ParsePath(%q): no error", s)
		}
	}
}

func TestParseArguments(t *testing.T) {
	msgs, _, err := Parse([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"bcc":"x@y.test"}}}`))
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Parse: %v %v", msgs, err)
	}
	p, _ := ParsePath("$.bcc")
	if v, ok := p.Lookup(msgs[0].Arguments); !ok || v != "x@y.test" {
		t.Errorf("$.bcc of the call's arguments = %q, %v", v, ok)
	}
}
