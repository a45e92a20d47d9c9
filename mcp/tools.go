package mcp

import (
	"crypto/sha256"
	"encoding/json"
)

// Tool is what Sluice keeps of one tool of a tools/list result.
type Tool struct {
	Name string
	// Hash is a SHA-256 of the tool's name, description and input schema
	// (the schema re-encoded with sorted keys), so a tool whose
	// description or schema changes after first sight is noticed however
	// its server orders its keys.
	Hash [32]byte
	// Fields hash each of ToolFields alone, so a change can say which
	// of them changed.
	Fields [len(ToolFields)][32]byte
}

// ToolFields are the fields of a tool a rug pull would change, besides
// its name (which identifies it).
var ToolFields = [...]string{"description", "inputSchema"}

// FilterTools reads a tools/list response message (one JSON-RPC
// response, as written) and removes the tools keep refuses. It returns
// the message to send on (msg itself when nothing was removed), the
// tools listed before filtering and the names removed. Keys of the
// message other than the removed tools are kept as written.
func FilterTools(msg []byte, keep func(name string) bool) (out []byte, tools []Tool, removed []string, err error) {
	var o map[string]json.RawMessage
	if err := json.Unmarshal(msg, &o); err != nil {
		return nil, nil, nil, err
	}
	var res map[string]json.RawMessage
	if err := json.Unmarshal(o["result"], &res); err != nil {
		return nil, nil, nil, ErrNotJSONRPC
	}
	var list []json.RawMessage
	if err := json.Unmarshal(res["tools"], &list); err != nil {
		return nil, nil, nil, ErrNotJSONRPC
	}
	kept := list[:0:0]
	for _, raw := range list {
		var t map[string]json.RawMessage
		var name string
		if json.Unmarshal(raw, &t) != nil || json.Unmarshal(t["name"], &name) != nil {
			return nil, nil, nil, ErrNotJSONRPC
		}
		tools = append(tools, toolOf(name, t))
		if keep != nil && !keep(name) {
			removed = append(removed, name)
			continue
		}
		kept = append(kept, raw)
	}
	if len(removed) == 0 {
		return msg, tools, nil, nil
	}
	if res["tools"], err = json.Marshal(kept); err != nil {
		return nil, nil, nil, err
	}
	if o["result"], err = json.Marshal(res); err != nil {
		return nil, nil, nil, err
	}
	out, err = json.Marshal(o)
	return out, tools, removed, err
}

// toolOf hashes the fields of a tool a rug pull would change, together
// (Hash) and one by one (Fields).
func toolOf(name string, t map[string]json.RawMessage) Tool {
	out := Tool{Name: name}
	h := sha256.New()
	for i, k := range append([]string{"name"}, ToolFields[:]...) {
		c := canonical(t[k])
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(c)
		h.Write([]byte{0})
		if i > 0 {
			out.Fields[i-1] = sha256.Sum256(c)
		}
	}
	h.Sum(out.Hash[:0])
	return out
}

// canonical re-encodes JSON with sorted keys and no spaces.
func canonical(raw json.RawMessage) []byte {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return raw
	}
	b, err := json.Marshal(v)
	if err != nil {
		return raw
	}
	return b
}
