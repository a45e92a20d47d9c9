package mitm

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/audit/audittest"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/workload"
)

// noNames is a DNS server that knows no name for any address (the
// benchmark's upstream is reached by its address).
type noNames struct{}

func (noNames) NamesFor(workload.Identity, netip.Addr) []string { return nil }

// BenchmarkEmit is the end of every proxied request: the record to the
// JSON audit log, the metrics and the flows table (as the node wires
// them), and the decision line at sluice run's default level (Warn, so
// an allow is not written).
func BenchmarkEmit(b *testing.B) {
	sinks := audit.Multi{audit.NewJSONLog(io.Discard), metrics.New(metrics.Options{}), flows.New(flows.Options{})}
	p := &Proxy{
		deps: Deps{Audit: sinks, Names: noNames{}},
		log:  slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	rec := audittest.PodRecord(time.Now())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := rec
		for pb.Next() {
			p.emit(&r)
		}
	})
}
