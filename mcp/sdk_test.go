package mcp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sluicehq/sluice/mcp"
)

// The official Go SDK's client surfaces each error Sluice answers with
// as the JSON-RPC error it is, code and message intact. (It reads the
// codes -32003 and -32004 as its own "client/server is closing" and
// reports them as a closed connection, the code lost, so an agent on
// the Go SDK saw a policy denial as a dead server.)
func TestErrorCodesReachTheGoSDK(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int
		status int
	}{
		{"denied", mcp.CodeDenied, http.StatusOK},
		{"tool changed", mcp.CodeToolChanged, http.StatusOK},
		{"rate limited", mcp.CodeRateLimited, http.StatusOK},
		{"header mismatch", mcp.CodeHeaderMismatch, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := sdk.NewServer(&sdk.Implementation{Name: "s", Version: "1"}, nil)
			sdk.AddTool(server, &sdk.Tool{Name: "rm"}, func(context.Context, *sdk.CallToolRequest, struct{}) (*sdk.CallToolResult, any, error) {
				return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: "removed"}}}, nil, nil
			})
			h := sdk.NewStreamableHTTPHandler(func(*http.Request) *sdk.Server { return server }, &sdk.StreamableHTTPOptions{Stateless: true})
			// Sluice in front: a tools/call is answered with its error.
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				msgs, _, err := mcp.Parse(body)
				if err == nil && len(msgs) == 1 && msgs[0].Method == "tools/call" {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(tc.status)
					_, _ = w.Write(mcp.ErrorBody(msgs[0].ID, tc.code, "refused by Sluice"))
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
				h.ServeHTTP(w, r)
			}))
			defer ts.Close()

			ctx := context.Background()
			cs, err := sdk.NewClient(&sdk.Implementation{Name: "c", Version: "1"}, nil).Connect(ctx, &sdk.StreamableClientTransport{Endpoint: ts.URL, MaxRetries: -1}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			_, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "rm", Arguments: json.RawMessage(`{}`)})
			var we *jsonrpc.Error
			if !errors.As(err, &we) || int(we.Code) != tc.code || we.Message != "refused by Sluice" {
				t.Errorf("CallTool = %v, want the JSON-RPC error %d", err, tc.code)
			}
			if errors.Is(err, sdk.ErrConnectionClosed) {
				t.Errorf("CallTool = %v: the SDK took Sluice's answer for a closed connection", err)
			}
		})
	}
}
