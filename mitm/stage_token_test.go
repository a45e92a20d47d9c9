package mitm

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// testJWT is a JWT (signature not valid: Sluice checks none) whose
// payload is claims.
func testJWT(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(claims)) + ".c2lnbmF0dXJl"
}

func TestTokenStage(t *testing.T) {
	const call = `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{}}}`
	other := "Bearer " + testJWT(`{"aud":["https://mcp.example.com"],"sub":"u1"}`)
	for _, tc := range []struct {
		name, setting, auth string
		mcp                 bool
		want                *answerWant
		wantBody            string
		wantDecision        string
		wantAud             []string
	}{
		{name: "no token", wantDecision: "allow"},
		{name: "an opaque token is not read", auth: "Bearer ghp_0123456789", wantDecision: "allow"},
		{name: "audience is the host", auth: "Bearer " + testJWT(`{"aud":"api.test"}`), wantDecision: "allow"},
		{name: "audience is a URL on the host", auth: "Bearer " + testJWT(`{"aud":["x","https://api.test/v1"]}`), wantDecision: "allow"},
		{name: "another audience, audit (the default): would_deny", auth: other,
			wantDecision: "would_deny", wantAud: []string{"https://mcp.example.com"}},
		{name: "another audience, off", setting: "mcp: {tokenAudience: off}\n", auth: other, wantDecision: "allow"},
		{name: "another audience, enforce: 403", setting: "mcp: {tokenAudience: enforce}\n", auth: other,
			want:     &answerWant{403, "deny", policy.RuleTokenAudience, audit.ReasonTokenAudience},
			wantBody: `"reason":"bearer token issued for another audience"`, wantDecision: "deny", wantAud: []string{"https://mcp.example.com"}},
		{name: "another audience, enforce, MCP: a JSON-RPC error", setting: "mcp: {tokenAudience: enforce}\n", auth: other, mcp: true,
			want:         &answerWant{200, "deny", policy.RuleTokenAudience, audit.ReasonTokenAudience},
			wantBody:     `{"jsonrpc":"2.0","id":9,"error":{"code":-32030,"message":"denied by Sluice policy (rule token-audience: bearer token issued for another audience)"}}`,
			wantDecision: "deny", wantAud: []string{"https://mcp.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := policy.Parse([]byte("version: 1\n"+tc.setting+"ssrf: {allowCIDRs: [\"127.0.0.0/8\"]}\ndefaults: {action: allow}\n"), "p.yaml")
			if err != nil {
				t.Fatal(err)
			}
			f := stageFlow(t, e)
			body := ""
			if tc.mcp {
				body = call
			}
			r := httptest.NewRequest("POST", "https://api.test/v1", strings.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			if tc.mcp {
				r.Header.Set("Mcp-Protocol-Version", "2025-06-18")
			}
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			x := stageExchange(f, r)
			x.t = fixedTarget(f, "api.test", policy.ConnDecision{})
			x.policyHost, x.Record.Host = "api.test", "api.test"
			var a *Answer
			for _, s := range []Stage{mcpStage{}, policyStage{}, tokenStage{}} {
				if a = s.Request(x); a != nil {
					break
				}
			}
			checkAnswer(t, a, tc.want)
			if a != nil && !strings.Contains(string(a.Body), tc.wantBody) {
				t.Errorf("body %s, want %s", a.Body, tc.wantBody)
			}
			if x.Record.Decision != tc.wantDecision || !slices.Equal(x.Record.TokenAudience, tc.wantAud) {
				t.Errorf("record decision %q (%s: %s) token_audience %q, want %q %q", x.Record.Decision, x.Record.Rule, x.Record.Reason, x.Record.TokenAudience, tc.wantDecision, tc.wantAud)
			}
			if tc.wantAud != nil && (x.Record.Rule != policy.RuleTokenAudience || x.Record.Reason != audit.ReasonTokenAudience) {
				t.Errorf("record rule %q reason %q", x.Record.Rule, x.Record.Reason)
			}
			var log bytes.Buffer
			audit.NewJSONLog(&log).Record(x.Record)
			if strings.Contains(log.String(), "c2lnbmF0dXJl") || strings.Contains(log.String(), `"sub"`) {
				t.Error("the token is in the record")
			}
		})
	}
}

// Through the explicit proxy: a bearer JWT for another audience is
// refused in enforce mode before it reaches the upstream, and the record
// carries the audience, not the token.
func TestTokenAudienceProxy(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits atomic.Int64
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write([]byte("ok"))
	}))
	e, err := policy.Parse([]byte("version: 1\nmcp: {tokenAudience: enforce}\nssrf: {allowCIDRs: [\"127.0.0.0/8\"]}\ndefaults: {action: allow}\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, tca, e)
	c := h.client(false)
	for _, tc := range []struct {
		path, aud string
		status    int
	}{
		{"/mine", `"https://api.test/"`, 200},
		{"/passthrough", `["https://mcp.example.com"]`, 403},
	} {
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d%s", up.addr.Port(), tc.path), nil)
		req.Header.Set("Authorization", "Bearer "+testJWT(`{"aud":`+tc.aud+`}`))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
	}
	rec := h.recs.wait(t, "passthrough", func(r audit.Record) bool { return r.Path == "/passthrough" })
	if rec.Decision != audit.DecisionDeny || rec.Rule != policy.RuleTokenAudience || !slices.Equal(rec.TokenAudience, []string{"https://mcp.example.com"}) {
		t.Errorf("record %s %s %q", rec.Decision, rec.Rule, rec.TokenAudience)
	}
	if hits.Load() != 1 {
		t.Errorf("upstream reached %d times, want 1", hits.Load())
	}
}
