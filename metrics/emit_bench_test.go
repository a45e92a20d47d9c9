package metrics_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit/audittest"
	"github.com/sluicehq/sluice/metrics"
)

// BenchmarkRecordPod is the metrics' part of one proxied request from a
// Kubernetes pod (the record mitm emits: runtime metadata, so
// sluice_workload_info too).
func BenchmarkRecordPod(b *testing.B) {
	m := metrics.New(metrics.Options{})
	r := audittest.PodRecord(time.Now())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := r
		for pb.Next() {
			m.Record(&r)
		}
	})
}
