package advise

import (
	"os"
	"strings"
	"testing"
)

func TestReplay(t *testing.T) {
	recs := readFixture(t)
	for _, tt := range []struct {
		name   string
		policy string
		denied int
		want   []string // lines of the report
	}{
		{"default policy audits: nothing newly denied", "version: 1\nmode: audit\n", 0,
			[]string{"newly denied: 0", "newly allowed: 1", "/system.slice/agent.service -> evil.example:443: 1 allow by rule default (allowed by default; was deny), e.g. POST /upload"}},
		{"github only: the rest is newly denied", "version: 1\ndefaults: {action: deny}\nrules: [{name: gh, action: allow, destinations: {hosts: [api.github.com]}}]\n", 16,
			[]string{"newly denied: 16", "payments/checkout-5d9f -> api.stripe.com:443: 4 deny by rule default (denied by default; was allow), e.g. POST /v1/charges"}},
		// 15 requests to GitHub over two minutes, 12 of them in 34 s: at
		// the replay's own speed a bucket of 12 would run dry, at the
		// records' times it refills.
		{"a rate limit follows the records' clock", "version: 1\nrules: [{name: gh, action: allow, destinations: {hosts: [api.github.com]}, rateLimit: {minute: 12}}]\n", 1,
			[]string{"newly denied: 1", "internal.svc:8080: 1 deny by rule ssrf"}},
		{"a tighter rate limit denies the burst", "version: 1\nrules: [{name: gh, action: allow, destinations: {hosts: [api.github.com]}, rateLimit: {minute: 6}}]\n", 4,
			[]string{"/system.slice/agent.service -> api.github.com:443: 3 deny by rule gh (rate limit exceeded; was allow)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j, err := NewJudge([]byte(tt.policy), "p.yaml")
			if err != nil {
				t.Fatal(err)
			}
			rep := Replay(j, recs)
			var b strings.Builder
			rep.WriteText(&b, "p.yaml")
			if rep.Denied() != tt.denied {
				t.Errorf("newly denied %d, want %d", rep.Denied(), tt.denied)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("report lacks %q", w)
				}
			}
			if t.Failed() {
				t.Logf("\n%s", b.String())
			}
		})
	}
}

func TestDiff(t *testing.T) {
	old, _ := os.ReadFile("testdata/old.yaml")
	nw, _ := os.ReadFile("testdata/new.yaml")
	rep, err := Diff(old, "old.yaml", nw, "new.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.WriteText(&b, "old.yaml", "new.yaml")
	out := b.String()
	for _, w := range []string{
		"new.yaml allows what old.yaml denied",
		"cgroups=/system.slice/agent.service -> api.stripe.com:443\n    GET /: allow by rule agent-stripe, was deny by rule default",
		"new.yaml denies what old.yaml allowed",
		"cgroups=/system.slice/agent.service -> api.github.com:443\n    GET /admin: deny by rule default, was allow by rule agent-github",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("diff lacks %q", w)
		}
	}
	if strings.Contains(out, "a workload no rule names -> api.stripe.com") {
		t.Error("diff says an unselected workload gains api.stripe.com")
	}
	same, err := Diff(old, "old.yaml", old, "old.yaml")
	if err != nil || same.Changed() {
		t.Errorf("a policy against itself: changed %v, err %v", same.Changed(), err)
	}
	if t.Failed() {
		t.Logf("\n%s", out)
	}
}

// A record's container, image and labels reach the replayed identity, so
// rules by workloads.containers, images and labels match in a replay.
func TestParseLineRuntimeMetadata(t *testing.T) {
	o, err := ParseLine([]byte(`{"msg":"audit","kind":"http","container":"api","image":"python:3.12","labels":{"app":"web"},"namespace":"shop","pod":"web-0","host":"h.example","port":443}`))
	if err != nil {
		t.Fatal(err)
	}
	w := o.Workload
	if w.Container != "api" || w.Image != "python:3.12" || w.Labels["app"] != "web" || w.Namespace != "shop" || w.Pod != "web-0" {
		t.Fatalf("workload %+v", w)
	}
}
