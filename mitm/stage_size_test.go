package mitm

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

func TestSizeStageRequest(t *testing.T) {
	for _, tc := range []struct {
		name      string
		limit     int64
		body      string
		chunked   bool
		expect    bool
		want      *answerWant
		wantAbort bool // the body stream is refused as it passes the limit
	}{
		{name: "no limit", body: "hello"},
		{name: "within the limit", limit: 5, body: "hello"},
		{name: "Content-Length over the limit: 413 before sending", limit: 4, body: "hello", want: &answerWant{413, "deny", "api", audit.ReasonRequestTooLarge}},
		{name: "Expect: 100-continue over the limit: 417", limit: 4, body: "hello", expect: true, want: &answerWant{417, "deny", "api", audit.ReasonRequestTooLarge}},
		{name: "chunked within the limit", limit: 5, body: "hello", chunked: true},
		{name: "chunked over the limit: refused while streaming", limit: 4, body: "hello", chunked: true, wantAbort: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			r := httptest.NewRequest("POST", "https://api.test/", strings.NewReader(tc.body))
			if tc.chunked {
				r.ContentLength = -1
			}
			if tc.expect {
				r.Header.Set("Expect", "100-continue")
			}
			x := stageExchange(f, r)
			x.Decision = policy.Decision{Rule: "api", MaxRequestBody: tc.limit}
			checkAnswer(t, sizeStage{}.Request(x), tc.want)
			if tc.want != nil {
				return
			}
			var body io.ReadCloser = r.Body
			for _, w := range x.wraps {
				body = w(body)
			}
			got, err := io.ReadAll(body)
			aborted := x.aborted.Load()
			switch {
			case tc.wantAbort && (!errors.Is(err, errRequestBodyTooLarge) || aborted == nil || aborted.Status != 413 || !aborted.Close):
				t.Fatalf("read %q, %v, abort %+v; want 413 and close once past the limit", got, err, aborted)
			case !tc.wantAbort && (err != nil || string(got) != tc.body || aborted != nil):
				t.Fatalf("read %q, %v, abort %+v; want the whole body", got, err, aborted)
			}
		})
	}
}

func TestSizeStageResponse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limit   int64
		body    string
		length  int64 // Content-Length; -1 chunked
		want    *answerWant
		wantGot string
		wantCut bool
	}{
		{name: "no limit", body: "hello", length: -1, wantGot: "hello"},
		{name: "exactly the limit", limit: 5, body: "hello", length: -1, wantGot: "hello"},
		{name: "Content-Length over the limit: 502", limit: 4, body: "hello", length: 5, want: &answerWant{502, "deny", "api", audit.ReasonResponseTooLarge}},
		{name: "stream over the limit: cut at it", limit: 3, body: "hello", length: -1, wantGot: "hel", wantCut: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/", nil))
			x.Decision = policy.Decision{Rule: "api", MaxResponseBody: tc.limit}
			resp := &http.Response{StatusCode: 200, ContentLength: tc.length, Body: io.NopCloser(strings.NewReader(tc.body))}
			checkAnswer(t, sizeStage{}.Response(x, resp), tc.want)
			if tc.want != nil {
				return
			}
			got, err := io.ReadAll(resp.Body)
			var cut *Cut
			if string(got) != tc.wantGot || errors.As(err, &cut) != tc.wantCut {
				t.Fatalf("read %q, %v; want %q, cut %v", got, err, tc.wantGot, tc.wantCut)
			}
			if tc.wantCut && (cut.Decision != "deny" || cut.Reason != audit.ReasonResponseTooLarge) {
				t.Fatalf("cut %+v", cut)
			}
		})
	}
}
