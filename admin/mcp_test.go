package admin_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/mcp"
	"github.com/sluicehq/sluice/mcpstate"
)

// /api/mcp lists the tools seen; /api/mcp/ack acknowledges a change,
// taking JSON only.
func TestMCPAPI(t *testing.T) {
	store, _ := mcpstate.Open("", 0)
	list := func(desc string) {
		_, tools, _, err := mcp.FilterTools([]byte(`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","description":"`+desc+`"}]}}`), nil)
		if err != nil {
			t.Fatal(err)
		}
		store.Observe("https://mcp.test/mcp", "w1", tools, time.Now())
	}
	list("Echo")
	list("Echo harder")
	srv := httptest.NewServer(admin.New(admin.Options{MCP: store}).Handler())
	defer srv.Close()

	code, body, _ := get(t, srv.URL+admin.MCPPath)
	var snap mcpstate.Snapshot
	if code != 200 || json.Unmarshal([]byte(body), &snap) != nil || len(snap.Servers) != 1 || snap.Servers[0].Tools[0].Change == nil {
		t.Fatalf("GET %s: %d %s; want one server whose echo changed", admin.MCPPath, code, body)
	}

	post := func(ct, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(srv.URL+admin.MCPAckPath, ct, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		ct, body string
		code     int
	}{
		{"text/plain", `{"server":"https://mcp.test/mcp","tool":"echo"}`, 415}, // a form a page could post
		{"application/json", `{"tool":"echo"}`, 400},
		{"application/json", `{"server":"https://mcp.test/mcp"}`, 400},
		{"application/json", `{"server":"https://mcp.test/mcp","tool":"echo","all":true}`, 400},
	} {
		if code, b := post(tc.ct, tc.body); code != tc.code {
			t.Errorf("POST %s %s: %d %s, want %d", tc.ct, tc.body, code, b, tc.code)
		}
	}
	if _, ok := store.Changed("https://mcp.test/mcp", "w1", "echo"); !ok {
		t.Fatal("a refused ack acknowledged")
	}
	code, b := post("application/json", `{"server":"https://mcp.test/mcp","tool":"echo"}`)
	var ack admin.AckResponse
	if code != 200 || json.Unmarshal([]byte(b), &ack) != nil || len(ack.Acknowledged) != 1 {
		t.Fatalf("ack: %d %s", code, b)
	}
	if _, ok := store.Changed("https://mcp.test/mcp", "w1", "echo"); ok {
		t.Error("echo still changed after the ack")
	}
}
