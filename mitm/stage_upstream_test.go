package mitm

import (
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

func TestUpstreamStage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		fail string
		want *answerWant
	}{
		{name: "upstream certificate failed: 502 naming no rule", err: errors.New("x509: unknown authority"), fail: audit.ReasonUpstreamVerify,
			want: &answerWant{502, "error", "", audit.ReasonUpstreamVerify}},
		{name: "upstream unreachable: 502", err: errors.New("connection refused"), fail: audit.ReasonUpstreamUnreachable,
			want: &answerWant{502, "error", "", audit.ReasonUpstreamUnreachable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/", nil))
			x.t = fixedTarget(f, "api.test", policy.ConnDecision{})
			x.t.err, x.t.fail = tc.err, tc.fail
			a := upstreamStage{}.Request(x)
			checkAnswer(t, a, tc.want)
			if a.Detail != tc.err.Error() {
				t.Errorf("detail %q, want the upstream's error", a.Detail)
			}
		})
	}
}
