package upstreams

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func picks(g *Group, now time.Time, n int) string {
	var out []string
	for range n {
		a, ok := g.Pick(now, nil)
		if !ok {
			a = "-"
		}
		g.Done(a, true, now)
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

func TestBalance(t *testing.T) {
	for _, tc := range []struct {
		name    string
		targets []TargetSpec
		want    string
	}{
		{"equal", []TargetSpec{{"a", 1}, {"b", 1}}, "a b a b"},
		{"weighted", []TargetSpec{{"a", 3}, {"b", 1}}, "a a b a a a b a"},
		{"smooth", []TargetSpec{{"a", 5}, {"b", 1}, {"c", 1}}, "a a b a c a a"},
		{"zero weight is one", []TargetSpec{{"a", 0}, {"b", 1}}, "a b a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGroup(Spec{Name: "g", Targets: tc.targets})
			if got := picks(g, t0, len(strings.Fields(tc.want))); got != tc.want {
				t.Errorf("picks = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLeastRequests(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Balance: LeastRequests, Targets: []TargetSpec{{"a", 1}, {"b", 1}, {"c", 2}}})
	var got []string
	for range 4 { // none finishes: in flight per weight decides
		a, _ := g.Pick(t0, nil)
		got = append(got, a)
	}
	if s := strings.Join(got, " "); s != "a b c c" {
		t.Errorf("picks = %q, want %q", s, "a b c c")
	}
	g.Done("b", true, t0)
	if a, _ := g.Pick(t0, nil); a != "b" {
		t.Errorf("after b finished, pick = %q, want b", a)
	}
}

func TestPickExclude(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Targets: []TargetSpec{{"a", 1}, {"b", 1}}})
	for range 3 {
		if a, ok := g.Pick(t0, []string{"a"}); !ok || a != "b" {
			t.Fatalf("pick excluding a = %q %v", a, ok)
		}
	}
	if _, ok := g.Pick(t0, []string{"a", "b"}); ok {
		t.Fatal("pick with every target excluded succeeded")
	}
}

func TestPassiveEjection(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Targets: []TargetSpec{{"a", 1}, {"b", 1}},
		Passive: Passive{Failures: 2, EjectFor: 10 * time.Second}})
	steps := []struct {
		at    time.Duration
		fails int    // a's failures in a row now
		want  string // picks after them
	}{
		{0, 1, "a b a b"}, // one failure, then successes: not ejected
		{0, 2, "b b b b"}, // two in a row: ejected for 10s
		{9 * time.Second, 0, "b b b b"},
		{10 * time.Second, 2, "b b b b"}, // back, fails again: 20s back-off
		{29 * time.Second, 0, "b b b b"},
		{30 * time.Second, 0, "a b a b"}, // a success resets the back-off
		{30 * time.Second, 2, "b b b b"}, // ejected for 10s again
		{40 * time.Second, 0, "a b a b"},
	}
	for i, s := range steps {
		now := t0.Add(s.at)
		for range s.fails {
			g.Pick(now, []string{"b"})
			g.Done("a", false, now)
		}
		if got := picks(g, now, 4); !samePicks(got, s.want) {
			t.Fatalf("step %d: picks = %q, want %q", i, got, s.want)
		}
	}
}

// samePicks compares picks as multisets: round-robin state carries over.
func samePicks(a, b string) bool {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, f := range strings.Fields(s) {
			m[f]++
		}
		return m
	}
	ca, cb := count(a), count(b)
	if len(ca) != len(cb) {
		return false
	}
	for k, v := range ca {
		if cb[k] != v {
			return false
		}
	}
	return true
}

func TestNoneHealthy(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Targets: []TargetSpec{{"a", 1}}, Passive: Passive{Failures: 1, EjectFor: time.Minute}})
	g.Pick(t0, nil)
	g.Done("a", false, t0)
	if a, ok := g.Pick(t0, nil); ok {
		t.Fatalf("pick = %q with the only target ejected", a)
	}
	h := g.Health(t0)
	if len(h) != 1 || h[0].Healthy || h[0].Group != "g" || h[0].Target != "a" {
		t.Fatalf("health = %+v", h)
	}
}

// fakeProber fails the addresses in down.
type fakeProber struct{ down map[string]bool }

func (f *fakeProber) Probe(_ context.Context, _ Check, _, addr string) error {
	if f.down[addr] {
		return errors.New("down")
	}
	return nil
}

func TestActiveCheck(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Hosts: []string{"api"}, Targets: []TargetSpec{{"a", 1}, {"b", 1}},
		Check: Check{Interval: 5 * time.Second, Timeout: time.Second, Healthy: 2, Unhealthy: 2}})
	p := &fakeProber{down: map[string]bool{"b": true}}
	healthy := func(now time.Time) string {
		var out []string
		for _, h := range g.Health(now) {
			if h.Healthy {
				out = append(out, h.Target)
			}
		}
		return strings.Join(out, " ")
	}
	steps := []struct {
		at   time.Duration
		down bool // b's state from this step on
		want string
	}{
		{0, true, "a b"},               // one failed probe
		{time.Second, true, "a b"},     // not due: no probe
		{5 * time.Second, true, "a"},   // two: unhealthy
		{10 * time.Second, false, "a"}, // one pass
		{15 * time.Second, false, "a b"},
	}
	for i, s := range steps {
		p.down["b"] = s.down
		now := t0.Add(s.at)
		CheckOnce(context.Background(), g, p, now)
		if got := healthy(now); got != s.want {
			t.Fatalf("step %d: healthy = %q, want %q", i, got, s.want)
		}
	}
	if a, _ := g.Pick(t0.Add(15*time.Second), []string{"a"}); a != "b" {
		t.Fatalf("restored b not picked: %q", a)
	}
}

func TestRetryBudget(t *testing.T) {
	g := NewGroup(Spec{Name: "g", Targets: []TargetSpec{{"a", 1}}, Retries: Retries{Attempts: 1, BudgetPercent: 10}})
	for range 50 {
		g.Pick(t0, nil)
	}
	n := 0
	for g.Retry(t0) {
		n++
		if n > 100 {
			break
		}
	}
	if n != 5 { // 10% of 50
		t.Fatalf("retries allowed = %d, want 5", n)
	}
	if !g.Retry(t0.Add(budgetWindow)) {
		t.Fatal("a new window allows no retry")
	}
}

func TestServesAndReload(t *testing.T) {
	s := NewSet(&fakeProber{}, func() time.Time { return t0 })
	defer s.Close()
	spec := Spec{Name: "g", Hosts: []string{"api.test", "other.test:8080"}, Targets: []TargetSpec{{"a", 1}, {"b", 1}},
		Passive: Passive{Failures: 1, EjectFor: time.Hour}}
	s.Update([]Spec{spec})
	g := s.For("API.test.", 80)
	if g == nil || s.For("other.test", 80) != nil || s.For("other.test", 8080) == nil {
		t.Fatal("For does not match the hosts")
	}
	g.Pick(t0, nil)
	g.Done("a", false, t0)
	s.Update([]Spec{spec}) // reload keeps a ejected
	if a, _ := s.For("api.test", 443).Pick(t0, nil); a != "b" {
		t.Fatalf("after reload pick = %q, want b (a still ejected)", a)
	}
}

func TestServesIPv6Hosts(t *testing.T) {
	s := NewSet(&fakeProber{}, func() time.Time { return t0 })
	defer s.Close()
	s.Update([]Spec{{Name: "v6", Hosts: []string{"[2001:db8::1]:8443", "2001:db8::2"}, Targets: []TargetSpec{{"a", 1}}}})
	for _, c := range []struct {
		host string
		port uint16
		want bool
	}{
		{"2001:db8::1", 8443, true},
		{"2001:db8::1", 443, false},
		{"2001:db8::2", 443, true},
		{"2001:db8::3", 443, false},
	} {
		if got := s.For(c.host, c.port) != nil; got != c.want {
			t.Errorf("For(%s, %d) served = %v, want %v", c.host, c.port, got, c.want)
		}
	}
}

func TestParseHost(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port uint16
		bad  bool
	}{
		{in: "api.internal", host: "api.internal"},
		{in: "api.internal:8080", host: "api.internal", port: 8080},
		{in: "::1", host: "::1"},
		{in: "[::1]:8443", host: "::1", port: 8443},
		{in: "api.internal:0", bad: true},
		{in: "api.internal:http", bad: true},
		{in: "[::1]", bad: true},
	} {
		h, p, err := ParseHost(c.in)
		if (err != nil) != c.bad || h != c.host || p != c.port {
			t.Errorf("ParseHost(%q) = %q, %d, %v; want %q, %d, error %v", c.in, h, p, err, c.host, c.port, c.bad)
		}
	}
}
