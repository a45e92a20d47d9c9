package mitm

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

func TestPolicyStage(t *testing.T) {
	limited := policy.Decision{Verdict: policy.Deny, Status: 429, Rule: "api", Reason: "rate limit exceeded",
		Header: http.Header{"Retry-After": {"3"}}}
	for _, tc := range []struct {
		name         string
		d            policy.Decision
		want         *answerWant
		wantDecision string
	}{
		{name: "allowed by a rule", d: policy.Decision{Rule: "api", Reason: audit.ReasonAllowedByRule}, wantDecision: "allow"},
		{name: "audit mode: would deny, goes on", d: policy.Decision{WouldDeny: true, Rule: "ssrf", Reason: audit.ReasonLoopback}, wantDecision: "would_deny"},
		{name: "denied by a rule", d: policy.Decision{Verdict: policy.Deny, Rule: "no-admin", Reason: audit.ReasonDeniedByRule},
			want: &answerWant{403, "deny", "no-admin", audit.ReasonDeniedByRule}},
		{name: "rate limited: the policy's status", d: limited, want: &answerWant{429, "deny", "api", "rate limit exceeded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec := &fakeDecider{req: func(*policy.Request) policy.Decision { return tc.d }}
			f := stageFlow(t, dec)
			x := stageExchange(f, httptest.NewRequest("POST", "https://api.test/v1/x", nil))
			x.t = fixedTarget(f, "api.test", policy.ConnDecision{})
			x.policyHost = "api.test" // as the target stage binds it
			checkAnswer(t, policyStage{}.Request(x), tc.want)
			if !x.decided || x.Decision.Rule != tc.d.Rule {
				t.Errorf("exchange decision %+v, want the policy's", x.Decision)
			}
			if tc.want == nil && x.Record.Decision != tc.wantDecision {
				t.Errorf("record decision %q, want %q", x.Record.Decision, tc.wantDecision)
			}
			reqs := dec.requests()
			if len(reqs) != 1 || reqs[0].Method != "POST" || reqs[0].Path != "/v1/x" || reqs[0].Host != "api.test" {
				t.Errorf("policy asked %+v, want one POST /v1/x on api.test", reqs)
			}
		})
	}
}
