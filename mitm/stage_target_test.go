package mitm

import (
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

func TestTargetStage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		connHost string // the TLS connection's SNI; empty: none (judged by address)
		url      string
		explicit bool
		want     *answerWant
		wantHost string
	}{
		{name: "same host as the connection", connHost: "api.test", url: "https://api.test/x", wantHost: "api.test"},
		{name: "host differs only in case and trailing dot", connHost: "api.test", url: "https://API.test./x", wantHost: "api.test."},
		{name: "another host on the connection: 421", connHost: "api.test", url: "https://other.test/x",
			want: &answerWant{421, "deny", "", audit.ReasonMisdirected}},
		{name: "no SNI: any Host, judged by the address", url: "https://other.test/x", wantHost: "other.test"},
		{name: "explicit proxy: origin-form is not a proxy request", explicit: true, url: "/x",
			want: &answerWant{400, "error", "", audit.ReasonNotProxy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			r := httptest.NewRequest("GET", tc.url, nil)
			if tc.explicit {
				f.listener = &explicitListener{}
				r.URL.Host, r.URL.Scheme = "", ""
			} else {
				fixedTarget(f, tc.connHost, policy.ConnDecision{})
			}
			x := stageExchange(f, r)
			checkAnswer(t, targetStage{}.Request(x), tc.want)
			if tc.want == nil && (x.Record.Host != tc.wantHost || x.t != f.fixed || x.Record.Port != 443) {
				t.Errorf("record host %q port %d, target %p; want host %q on the flow's target", x.Record.Host, x.Record.Port, x.t, tc.wantHost)
			}
		})
	}
}
