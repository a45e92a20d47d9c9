package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/upstreams"
)

// An upstreams list with every mistake: each is named by its path, value
// and fix, all at once.
func TestUpstreamProblems(t *testing.T) {
	src := `version: 1
upstreams:
- name: a
  hosts: [api.test, "api.test:99999", "*.x.test"]
  targets: [{address: 10.0.0.1}, {address: "10.0.0.2:80", weight: -1}]
  balance: random
  healthCheck: {http: healthz, interval: often}
  passive: {ejectFor: "-1s"}
  retries: {attempts: 11, budget: 200}
- name: a
  hosts: [api.test]
  targets: []
  healthCheck: {}
`
	want := []string{
		`p.yaml:4: upstreams[0].hosts[1] "api.test:99999": a port is 1 to 65535, e.g. api.internal:8080 or [2001:db8::1]:8443`,
		`p.yaml:4: upstreams[0].hosts[2] "*.x.test": a group serves exact hosts, list each one`,
		`p.yaml:5: upstreams[0].targets[0].address "10.0.0.1": use ip:port or host:port, e.g. 10.0.0.5:8080`,
		`p.yaml:5: upstreams[0].targets[1].weight -1: a weight is 1 or more; leave it out for 1`,
		`p.yaml:6: upstreams[0].balance "random": use round-robin or least-requests`,
		`p.yaml:7: upstreams[0].healthCheck.http "healthz": a path starts with /, e.g. /healthz`,
		`p.yaml:7: upstreams[0].healthCheck.interval "often": use a positive duration like "5s" or "1m"`,
		`p.yaml:8: upstreams[0].passive.ejectFor "-1s": use a positive duration like "5s" or "1m"`,
		`p.yaml:9: upstreams[0].retries.attempts 11: use 1 to 10, or leave retries out for none`,
		`p.yaml:9: upstreams[0].retries.budget 200: a percentage is 1 to 100; leave it out for 20`,
		`p.yaml:10: upstreams[1].name "a": duplicate of upstreams[0].name, names must be unique`,
		`p.yaml:11: upstreams[1].hosts[0] "api.test": already served by upstreams[0]: a host belongs to one group`,
		`p.yaml:12: upstreams[1].targets: missing: list at least one target, e.g. [{address: 10.0.0.5:8080}]`,
		`p.yaml:13: upstreams[1].healthCheck: give http: /path or tcp: true`,
	}
	_, err := Decode([]byte(src), "p.yaml")
	var got []string
	for _, pr := range Problems(err) {
		got = append(got, pr.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A valid group compiles with its defaults filled in.
func TestUpstreamsCompile(t *testing.T) {
	e, err := Parse([]byte(`version: 1
upstreams:
- name: pool
  hosts: [API.test, "b.test:8080", "[2001:db8::1]:8443"]
  targets: [{address: "10.0.0.1:80", weight: 3}, {address: "backend.test:80"}]
  healthCheck: {tcp: true, interval: 2s}
  passive: {consecutiveFailures: 2}
  retries: {}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := e.Upstreams()
	want := upstreams.Spec{Name: "pool", Hosts: []string{"api.test", "b.test:8080", "[2001:db8::1]:8443"},
		Targets: []upstreams.TargetSpec{{Address: "10.0.0.1:80", Weight: 3}, {Address: "backend.test:80", Weight: 1}},
		Check:   upstreams.Check{Interval: 2 * time.Second, Timeout: 2 * time.Second, Healthy: 2, Unhealthy: 2},
		Passive: upstreams.Passive{Failures: 2, EjectFor: 30 * time.Second},
		Retries: upstreams.Retries{Attempts: 1}}
	if len(got) != 1 || !equalSpec(got[0], want) {
		t.Fatalf("compiled %+v\nwant %+v", got, want)
	}
}

func equalSpec(a, b upstreams.Spec) bool {
	return a.Name == b.Name && strings.Join(a.Hosts, ",") == strings.Join(b.Hosts, ",") &&
		len(a.Targets) == len(b.Targets) && a.Targets[0] == b.Targets[0] && a.Targets[1] == b.Targets[1] &&
		a.Check == b.Check && a.Passive == b.Passive && a.Retries == b.Retries && a.Balance == b.Balance
}
