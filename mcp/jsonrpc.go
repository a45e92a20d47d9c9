// Package mcp reads the Model Context Protocol as it crosses Sluice: the
// JSON-RPC 2.0 messages of the Streamable HTTP transport (a POST body
// holding one message or, in revision 2025-03-26, a batch), the
// Server-Sent Events a server answers with, and the request headers newer
// revisions mirror from the body (Mcp-Method, Mcp-Name). It is pure: no
// I/O, no state beyond a parser's, so the proxy's MCP stage (mitm) and
// the policy share one reading of a message, and every parser is fuzzed.
//
// Messages are read the way a JavaScript server reads them (JSON.parse):
// keys match exactly and the last of duplicate keys wins. encoding/json's
// case-insensitive struct matching would let {"params":…,"Params":…}
// show Sluice one tool and the server another.
package mcp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// Header names of the Streamable HTTP transport.
const (
	HeaderSession  = "Mcp-Session-Id"
	HeaderProtocol = "Mcp-Protocol-Version"
	// HeaderMethod and HeaderName mirror the body's method and its
	// params.name or params.uri (SEP-2243), for intermediaries.
	HeaderMethod = "Mcp-Method"
	HeaderName   = "Mcp-Name"
)

// JSON-RPC error codes Sluice answers with. -32000 to -32099 are
// reserved for implementation-defined server errors. MCP itself uses
// -32020 (HeaderMismatch in the 2026-07-28 schema; SEP-2243 first
// proposed -32001) for a header that disagrees with the body, as the
// official SDKs do. Sluice's own codes, -32029 to -32031, keep clear of
// those the spec (-32002, -32020 to -32022, -32042) and the SDKs give a
// meaning: the TypeScript SDK's -32000 and -32001, and the Go SDK's
// -32001 to -32005, of which it reports -32003 and -32004 as a closed
// connection with the code lost.
const (
	// CodeHeaderMismatch: an Mcp-Method or Mcp-Name header disagrees
	// with the body (HTTP 400). The spec's code, so a client that tells
	// a header mismatch from other errors (the Go SDK's
	// mcp.CodeHeaderMismatch) recognises Sluice's refusal.
	CodeHeaderMismatch = -32020
	// CodeRateLimited: a rate limit of Sluice's policy refused it.
	CodeRateLimited = -32029
	// CodeDenied: Sluice's policy denied the request.
	CodeDenied = -32030
	// CodeToolChanged: a tools/call of a tool whose description or
	// input schema changed since it was acknowledged, denied under
	// mcp.onToolChange: enforce until `sluice mcp ack`.
	CodeToolChanged = -32031
)

// Message is what Sluice reads of one JSON-RPC 2.0 message.
type Message struct {
	// ID is the id as written (a JSON string or number), nil for a
	// notification.
	ID json.RawMessage
	// Method is set on requests and notifications.
	Method string
	// Tool is params.name of a tools/call, Prompt params.name of a
	// prompts/get, Resource params.uri of resources/read, subscribe or
	// unsubscribe.
	Tool, Prompt, Resource string
	// Arguments is a tools/call's params.arguments, as written (nil
	// when absent).
	Arguments json.RawMessage
	// Response is true for a result or error message; ErrorCode is its
	// error.code (0 when it has none).
	Response  bool
	ErrorCode int
	// Result is a response's result, as written.
	Result json.RawMessage
}

// IsRequest reports whether m is a request (a method and an id).
func (m *Message) IsRequest() bool { return m.Method != "" && m.ID != nil }

// Name is the name the message targets: its tool, prompt or resource.
func (m *Message) Name() string {
	switch {
	case m.Tool != "":
		return m.Tool
	case m.Prompt != "":
		return m.Prompt
	}
	return m.Resource
}

// IDString is the id as written, "" for none.
func (m *Message) IDString() string { return string(m.ID) }

// ErrNotJSONRPC is returned for a body that is JSON but no JSON-RPC 2.0
// message or batch of them.
var ErrNotJSONRPC = errors.New("not a JSON-RPC 2.0 message")

// Parse reads a POST body or an SSE event's data: one message, or a batch
// (a JSON array of messages). batch says which. The raw fields of the
// messages (ID, Arguments, Result) share b's memory.
func Parse(b []byte) (msgs []Message, batch bool, err error) {
	if !json.Valid(b) {
		var v any // the syntax error, as encoding/json words it
		if err = json.Unmarshal(b, &v); err == nil {
			err = ErrNotJSONRPC
		}
		return nil, len(bytes.TrimSpace(b)) > 0 && bytes.TrimSpace(b)[0] == '[', err
	}
	if elements(b, func(raw []byte) {
		if err == nil {
			msgs = append(msgs, Message{})
			err = parseOne(raw, &msgs[len(msgs)-1])
		}
	}) {
		if err == nil && len(msgs) == 0 {
			err = ErrNotJSONRPC
		}
		if err != nil {
			return nil, true, err
		}
		return msgs, true, nil
	}
	var m Message
	if err := parseOne(b, &m); err != nil {
		return nil, false, err
	}
	return []Message{m}, false, nil
}

// parseOne reads one message of valid JSON. Of duplicate keys the last
// wins, as JSON.parse has it.
func parseOne(b []byte, m *Message) error {
	var jsonrpc, id, method, params, result, rpcErr []byte
	if !members(b, func(k, v []byte) {
		switch {
		case keyIs(k, "jsonrpc"):
			jsonrpc = v
		case keyIs(k, "id"):
			id = v
		case keyIs(k, "method"):
			method = v
		case keyIs(k, "params"):
			params = v
		case keyIs(k, "result"):
			result = v
		case keyIs(k, "error"):
			rpcErr = v
		}
	}) {
		return ErrNotJSONRPC
	}
	if v, ok := str(jsonrpc); !ok || v != "2.0" {
		return ErrNotJSONRPC
	}
	if id != nil && string(id) != "null" {
		if id[0] != '"' && id[0] != '-' && (id[0] < '0' || id[0] > '9') {
			return ErrNotJSONRPC
		}
		m.ID = id
	}
	if method != nil {
		var ok bool
		if m.Method, ok = str(method); !ok || m.Method == "" {
			return ErrNotJSONRPC
		}
		return m.params(params)
	}
	if result == nil && rpcErr == nil {
		return ErrNotJSONRPC
	}
	m.Response, m.Result = true, result
	if rpcErr != nil {
		var code []byte
		if !members(rpcErr, func(k, v []byte) {
			if keyIs(k, "code") {
				code = v
			}
		}) && string(rpcErr) != "null" {
			return ErrNotJSONRPC
		}
		var ok bool
		if m.ErrorCode, ok = integer(code); !ok {
			return ErrNotJSONRPC
		}
	}
	return nil
}

// params reads the names a request targets from its params.
func (m *Message) params(raw []byte) error {
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
	var name, args []byte
	if raw == nil || !members(raw, func(k, v []byte) {
		switch {
		case keyIs(k, key):
			name = v
		case keyIs(k, "arguments"):
			args = v
		}
	}) {
		return ErrNotJSONRPC
	}
	var ok bool
	if *dst, ok = str(name); !ok || *dst == "" {
		return ErrNotJSONRPC // a call that names nothing is not judged as one that names something
	}
	if m.Method == "tools/call" {
		m.Arguments = args
	}
	return nil
}

// HeaderValue decodes a mirrored header's value: plain, or the
// "=?base64?…?=" form SEP-2243 uses for names that are not ASCII.
func HeaderValue(v string) string {
	if s, ok := strings.CutPrefix(v, "=?base64?"); ok {
		if s, ok = strings.CutSuffix(s, "?="); ok {
			if b, err := base64.StdEncoding.DecodeString(s); err == nil {
				return string(b)
			}
		}
	}
	return v
}

// ErrorBody is the JSON-RPC error response to the request with id (nil:
// null) carrying code and message.
func ErrorBody(id json.RawMessage, code int, message string) []byte {
	if id == nil {
		id = json.RawMessage("null")
	}
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}{JSONRPC: "2.0", ID: id, Error: struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{code, message}})
	return b
}
