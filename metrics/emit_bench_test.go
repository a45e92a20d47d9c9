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
	audittest.RecordPodInParallel(b, metrics.New(metrics.Options{}), time.Now())
}
