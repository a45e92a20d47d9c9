package mitm

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

// stageFlow is a flow of a proxy that asks dec, for stage table tests:
// no listener and no upstream, just what the stages read.
func stageFlow(t testing.TB, dec policy.Decider) *flow {
	t.Helper()
	auth, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cur := &policy.Current{}
	if dec != nil {
		cur.Store(dec)
	}
	p, err := New(config.DefaultProxy(), Deps{CA: auth, Policy: cur, Resolver: testResolver,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return &flow{p: p, ctx: context.Background(), start: time.Now(),
		dst: Destination{Addr: netip.MustParseAddrPort("127.0.0.1:443"), Port: 443}}
}

// stageExchange is one request on f, as ServeHTTP starts it.
func stageExchange(f *flow, r *http.Request) *Exchange {
	now := time.Now()
	return &Exchange{f: f, w: httptest.NewRecorder(), Req: r, Record: f.record(audit.KindHTTP, now), start: now}
}

// fixedTarget gives f one destination, as a decrypted TLS flow has.
func fixedTarget(f *flow, host string, cd policy.ConnDecision) *target {
	f.fixed = &target{host: host, port: 443, useTLS: true, cd: cd,
		conn: &policy.Conn{Host: host, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: 443, TLS: true}}
	return f.fixed
}

// answerOf describes an Answer for table tests: nil, or its status,
// decision, rule and reason.
type answerWant struct {
	status   int
	decision string
	rule     string
	reason   string
}

func checkAnswer(t *testing.T, got *Answer, want *answerWant) {
	t.Helper()
	switch {
	case want == nil && got != nil:
		t.Fatalf("answer %+v, want the request to go on", got)
	case want != nil && got == nil:
		t.Fatalf("no answer, want %+v", *want)
	case want != nil:
		if got.Status != want.status || got.Decision != want.decision || got.Rule != want.rule || got.Reason != want.reason {
			t.Fatalf("answer {status %d, decision %q, rule %q, reason %q}, want %+v", got.Status, got.Decision, got.Rule, got.Reason, *want)
		}
	}
}
