package flows_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit/audittest"
	"github.com/sluicehq/sluice/flows"
)

// BenchmarkRecordPod is the flows table's part of one proxied request
// from a Kubernetes pod (the record mitm emits), from parallel
// connections of one workload.
func BenchmarkRecordPod(b *testing.B) {
	audittest.RecordPodInParallel(b, flows.New(flows.Options{}), time.Now())
}
