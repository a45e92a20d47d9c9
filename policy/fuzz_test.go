package policy

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// FuzzParse feeds arbitrary bytes to the policy loader: it must never
// panic, every problem must render with the file name, and whatever it
// accepts must compile and decide a request.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"default.yaml", "testdata/example.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(rulesPolicy))
	f.Add([]byte("version: 1\nrules: [{name: a, action: allow, destinations: {hosts: ['*foo.com']}}]\n"))
	f.Add([]byte("version: 1\ndefaults: {rateLimit: {second: 1, burst: 2}, limits: {requestBody: 1KiB}}\n"))
	f.Add([]byte("version: 1\n---\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data, "f.yaml")
		if err != nil {
			if p != nil {
				t.Fatal("policy returned with an error")
			}
			probs := Problems(err)
			if len(probs) == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			for _, pr := range probs {
				if !strings.HasPrefix(pr.Error(), "f.yaml") || pr.Msg == "" {
					t.Fatalf("bad problem %q", pr.Error())
				}
			}
			return
		}
		e, err := New(p, Options{})
		if err != nil {
			t.Fatalf("Decode accepted what New refused: %v", err)
		}
		defer e.Limiters().Close()
		if usesRedis(p) {
			return // never dial an address from fuzzed input
		}
		c := &Conn{Workload: workload.Identity{Comm: "python3", Cgroup: "/kubepods/x"}, Host: "api.example.com", Port: 443, Addrs: public, TLS: true}
		e.Connection(context.Background(), c)
		d := e.Request(context.Background(), &Request{Conn: c, Method: "GET", Host: "api.example.com", Path: "/v1/x"})
		if d.Denied() && d.Rule == "" {
			t.Fatalf("deny without a rule: %+v", d)
		}
	})
}

func usesRedis(p *Policy) bool {
	if p.Defaults.RateLimit != nil && p.Defaults.RateLimit.Policy == "redis" {
		return true
	}
	for _, r := range p.Rules {
		if r.RateLimit != nil && r.RateLimit.Policy == "redis" {
			return true
		}
	}
	return false
}
