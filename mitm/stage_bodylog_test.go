package mitm

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestBodyLogStage(t *testing.T) {
	const rule = "    logBodies: {request: 64B, response: 8B}\n"
	for _, tc := range []struct {
		name, rule, reqBody, respBody string
		wantReq, wantResp             string
	}{
		{name: "no logBodies: nothing recorded", reqBody: "hello", respBody: "world"},
		{name: "bodies recorded up to their limits", rule: rule, reqBody: `{"q":"weather"}`, respBody: "sunny and warm",
			wantReq: `{"q":"weather"}`, wantResp: "sunny an"},
		{name: "a secret is redacted in the record, not in the stream", rule: rule, reqBody: `{"key":"` + awsKeyID + `"}`, respBody: "ok",
			wantReq: `{"key":"REDACTEDREDACTEDREDA"}`, wantResp: "ok"},
		{name: "a secret the limit cuts is redacted whole", rule: "    logBodies: {request: 12B}\n", reqBody: "k=" + awsKeyID,
			wantReq: "k=REDACTEDRE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			r := httptest.NewRequest("POST", "https://api.test/", strings.NewReader(tc.reqBody))
			x := stageExchange(f, r)
			x.Decision = carryDecision(t, "", tc.rule)
			if a := (bodyLogStage{}).Request(x); a != nil {
				t.Fatalf("answer %+v", a)
			}
			if got, err := readWrapped(x); err != nil || got != tc.reqBody {
				t.Fatalf("forwarded %q, %v; want the body unchanged", got, err)
			}
			resp := &http.Response{Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.respBody))}
			if a := (bodyLogStage{}).Response(x, resp); a != nil {
				t.Fatalf("answer %+v", a)
			}
			if got, _ := io.ReadAll(resp.Body); string(got) != tc.respBody {
				t.Fatalf("response %q, want it unchanged", got)
			}
			x.finish()
			if x.Record.RequestBody != tc.wantReq || x.Record.ResponseBody != tc.wantResp {
				t.Fatalf("record bodies %q and %q, want %q and %q", x.Record.RequestBody, x.Record.ResponseBody, tc.wantReq, tc.wantResp)
			}
		})
	}
}
