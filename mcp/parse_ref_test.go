package mcp

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// parseRef is Parse as it was written with encoding/json's maps: the
// reference the scanner-based Parse must agree with.
func parseRef(b []byte) (msgs []Message, batch bool, err error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return nil, true, err
		}
		if len(raws) == 0 {
			return nil, true, ErrNotJSONRPC
		}
		msgs = make([]Message, len(raws))
		for i, r := range raws {
			if err := parseOneRef(r, &msgs[i]); err != nil {
				return nil, true, err
			}
		}
		return msgs, true, nil
	}
	var m Message
	if err := parseOneRef(b, &m); err != nil {
		return nil, false, err
	}
	return []Message{m}, false, nil
}

func parseOneRef(b []byte, m *Message) error {
	var o map[string]json.RawMessage
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	var v string
	if json.Unmarshal(o["jsonrpc"], &v) != nil || v != "2.0" {
		return ErrNotJSONRPC
	}
	if id, ok := o["id"]; ok && !bytes.Equal(id, []byte("null")) {
		if len(id) == 0 || (id[0] != '"' && id[0] != '-' && (id[0] < '0' || id[0] > '9')) {
			return ErrNotJSONRPC
		}
		m.ID = id
	}
	if raw, ok := o["method"]; ok {
		if json.Unmarshal(raw, &m.Method) != nil || m.Method == "" {
			return ErrNotJSONRPC
		}
		return m.paramsRef(o["params"])
	}
	res, hasRes := o["result"]
	e, hasErr := o["error"]
	if !hasRes && !hasErr {
		return ErrNotJSONRPC
	}
	m.Response, m.Result = true, res
	if hasErr {
		var eo map[string]json.RawMessage
		if json.Unmarshal(e, &eo) != nil || json.Unmarshal(eo["code"], &m.ErrorCode) != nil {
			return ErrNotJSONRPC
		}
	}
	return nil
}

func (m *Message) paramsRef(raw json.RawMessage) error {
	var key string
	var dst *string
	switch m.Method {
	case "tools/call":
		key, dst = "name", &m.Tool
	case "prompts/get":
		key, dst = "name", &m.Prompt
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		key, dst = "uri", &m.Resource
	default:
		return nil
	}
	var p map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &p) != nil {
		return ErrNotJSONRPC
	}
	if json.Unmarshal(p[key], dst) != nil || *dst == "" {
		return ErrNotJSONRPC
	}
	if m.Method == "tools/call" {
		m.Arguments = p["arguments"]
	}
	return nil
}

// FuzzParseMatchesReference: the scanner reads every body as
// encoding/json's maps did (same messages, same success), so judging
// did not change with the faster parser.
func FuzzParseMatchesReference(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":[1,{"b":"}"}]}}}`,
		`[{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"a://b"}},{"jsonrpc":"2.0","method":"n"}]`,
		`{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":""}}`,
		`{"jsonrpc":"2.0","id":3,"error":{"code":null}}`,
		`{"jsonrpc":"2.0","id":3,"error":null}`,
		`{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a"}]}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\u0061me":"rm"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"},"method":"prompts/get"}`,
		`{"jsonrpc":"2.\u0030","id":1.5e3,"method":"x\xff"}`,
		` [ ] `, `null`, `{"jsonrpc":"2.0","id":true,"result":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gb, gerr := Parse(b)
		want, wb, werr := parseRef(b)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("%q: Parse error %v, reference %v", b, gerr, werr)
		}
		if gerr != nil {
			return
		}
		if gb != wb || len(got) != len(want) {
			t.Fatalf("%q: Parse %d messages batch %v, reference %d batch %v", b, len(got), gb, len(want), wb)
		}
		for i := range got {
			g, w := got[i], want[i]
			// Raw values compare as JSON: the reference's are copies of
			// the same bytes.
			if !bytes.Equal(g.ID, w.ID) || !bytes.Equal(g.Arguments, w.Arguments) || !bytes.Equal(g.Result, w.Result) {
				t.Fatalf("%q message %d: raw fields %+v, reference %+v", b, i, g, w)
			}
			g.ID, w.ID, g.Arguments, w.Arguments, g.Result, w.Result = nil, nil, nil, nil, nil, nil
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("%q message %d: %+v, reference %+v", b, i, g, w)
			}
		}
	})
}
