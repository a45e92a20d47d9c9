package mitm

import (
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

func TestConnStage(t *testing.T) {
	for _, tc := range []struct {
		name string
		cd   policy.ConnDecision
		want *answerWant
	}{
		{name: "decrypted connection: per request", cd: policy.ConnDecision{Action: policy.Decrypt}},
		{name: "rejected by the SSRF guard", cd: policy.ConnDecision{Action: policy.Reject, Decision: policy.Decision{Rule: policy.RuleSSRF, Reason: audit.ReasonLoopback}},
			want: &answerWant{403, "deny", policy.RuleSSRF, audit.ReasonLoopback}},
		{name: "rejected by a host rule", cd: policy.ConnDecision{Action: policy.Reject, Decision: policy.Decision{Verdict: policy.Deny, Rule: "no-evil", Reason: audit.ReasonDeniedByRule}},
			want: &answerWant{403, "deny", "no-evil", audit.ReasonDeniedByRule}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/", nil))
			x.t = fixedTarget(f, "api.test", tc.cd)
			a := connStage{}.Request(x)
			checkAnswer(t, a, tc.want)
			if a != nil && string(a.Body) != string(x.Decision.DenyBody()) {
				t.Errorf("body %s, want the policy's deny body", a.Body)
			}
		})
	}
}
