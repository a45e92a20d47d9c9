package mitm

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

// The credentials of these tests: "api" is bound to api.test and
// swapped in bodies too, "other" to other.test; both read API_TOKEN,
// whose value (see carryDecision) is real-secret-value-42.
const credsYAML = `credentials:
  - {name: api, env: API_TOKEN, hosts: [api.test], body: true}
  - {name: other, env: API_TOKEN, hosts: [other.test]}
  - {name: gone, env: UNSET_VARIABLE, hosts: [api.test]}
`

const secret = "real-secret-value-42"

func TestCredStage(t *testing.T) {
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	for _, tc := range []struct {
		name       string
		rule       string
		host       string // the name bound to what is dialed
		url        string // path and query; default /
		header     http.Header
		body       string
		want       *answerWant
		wantHeader http.Header // headers after the stage (only these are checked)
		wantBody   string
		wantAbort  int
		wantCreds  []string
	}{
		{name: "no placeholder: untouched", host: "api.test", header: http.Header{"Authorization": {"Bearer mine"}},
			wantHeader: http.Header{"Authorization": {"Bearer mine"}}},
		{name: "placeholder in a header, bound host: swapped", host: "api.test", header: http.Header{"X-Api-Key": {"sluice:cred:api"}},
			wantHeader: http.Header{"X-Api-Key": {secret}}, wantCreds: []string{"api"}},
		{name: "placeholder in a Bearer value", host: "api.test", header: http.Header{"Authorization": {"Bearer sluice:cred:api"}},
			wantHeader: http.Header{"Authorization": {"Bearer " + secret}}, wantCreds: []string{"api"}},
		{name: "placeholder as a Basic-auth password", host: "api.test", header: http.Header{"Authorization": {basic("bot", "sluice:cred:api")}},
			wantHeader: http.Header{"Authorization": {basic("bot", secret)}}, wantCreds: []string{"api"}},
		{name: "placeholder to another host: 403 exfiltration", host: "evil.test", header: http.Header{"X-Api-Key": {"sluice:cred:api"}},
			want: &answerWant{403, "deny", "api", audit.ReasonExfiltration}},
		{name: "Basic-auth placeholder to another host: 403", host: "evil.test", header: http.Header{"Authorization": {basic("bot", "sluice:cred:api")}},
			want: &answerWant{403, "deny", "api", audit.ReasonExfiltration}},
		{name: "unknown credential: 403", host: "api.test", header: http.Header{"X-Api-Key": {"sluice:cred:nope"}},
			want: &answerWant{403, "deny", "api", audit.ReasonExfiltration}},
		{name: "secret unreadable: 502, no secret sent", host: "api.test", header: http.Header{"X-Api-Key": {"sluice:cred:gone"}},
			want: &answerWant{502, "error", "api", audit.ReasonCredentialMissing}},
		{name: "injection with ${cred:NAME}, client's value replaced", host: "api.test",
			rule:       "    headers: {request: {set: {Authorization: 'Bearer ${cred:api}'}, remove: [X-Debug], add: {X-Team: agents}}}\n",
			header:     http.Header{"Authorization": {"Bearer stolen"}, "X-Debug": {"1"}},
			wantHeader: http.Header{"Authorization": {"Bearer " + secret}, "X-Debug": nil, "X-Team": {"agents"}}, wantCreds: []string{"api"}},
		{name: "injection refused where the credential is not bound", host: "evil.test",
			rule: "    headers: {request: {set: {Authorization: 'Bearer ${cred:api}'}}}\n",
			want: &answerWant{403, "deny", "api", audit.ReasonCredentialNotBound}},
		{name: "placeholder in the URL: 403 even to a bound host", host: "api.test", url: "/?key=sluice:cred:api",
			want: &answerWant{403, "deny", "api", audit.ReasonExfiltration}},
		{name: "placeholder in a body, bound host: swapped", host: "api.test", body: `{"key":"sluice:cred:api"}`,
			wantBody: `{"key":"` + secret + `"}`, wantCreds: []string{"api"}},
		{name: "placeholder in a body to another host: refused", host: "evil.test", body: `{"key":"sluice:cred:api"}`, wantAbort: 403},
		{name: "placeholder in a body, credential without body: refused", host: "other.test", body: `{"key":"sluice:cred:other"}`, wantAbort: 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			var body io.Reader
			if tc.body != "" {
				body = oneByte{strings.NewReader(tc.body)}
			}
			if tc.url == "" {
				tc.url = "/"
			}
			r := httptest.NewRequest("POST", "https://api.test"+tc.url, body)
			for k, v := range tc.header {
				r.Header[k] = slices.Clone(v)
			}
			x := stageExchange(f, r)
			x.policyHost = tc.host
			x.Decision = carryDecision(t, credsYAML, tc.rule)
			a := credStage{}.Request(x)
			checkAnswer(t, a, tc.want)
			if a != nil && strings.Contains(a.Detail+string(a.Body), secret) {
				t.Fatalf("the answer holds the secret: %+v", a)
			}
			if tc.want != nil {
				return
			}
			for k, v := range tc.wantHeader {
				if got := r.Header.Values(k); !slices.Equal(got, v) {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if tc.body != "" {
				got, err := readWrapped(x)
				ab := x.aborted.Load()
				switch {
				case tc.wantAbort != 0 && (ab == nil || ab.Status != tc.wantAbort || err == nil):
					t.Fatalf("read %q, %v, abort %+v; want the body refused with %d", got, err, ab, tc.wantAbort)
				case tc.wantAbort == 0 && (err != nil || got != tc.wantBody):
					t.Fatalf("read %q, %v; want %q", got, err, tc.wantBody)
				case tc.wantAbort == 0 && r.ContentLength != -1:
					t.Fatalf("ContentLength %d, want -1 (the secret's length differs)", r.ContentLength)
				}
			}
			x.finish()
			if !slices.Equal(x.Record.Credentials, tc.wantCreds) {
				t.Fatalf("record credentials %v, want %v", x.Record.Credentials, tc.wantCreds)
			}
		})
	}
}

func TestCredStageResponseHeaders(t *testing.T) {
	f := stageFlow(t, nil)
	x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/", nil))
	x.Decision = carryDecision(t, "", "    headers: {response: {remove: [Server], set: {Cache-Control: no-store}, add: {X-Seen: sluice}}}\n")
	resp := &http.Response{Header: http.Header{"Server": {"nginx"}, "Cache-Control": {"max-age=60"}}}
	if a := (credStage{}).Response(x, resp); a != nil {
		t.Fatalf("answer %+v", a)
	}
	want := http.Header{"Cache-Control": {"no-store"}, "X-Seen": {"sluice"}}
	if len(resp.Header) != len(want) || resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("X-Seen") != "sluice" {
		t.Fatalf("response header %v, want %v", resp.Header, want)
	}
}
