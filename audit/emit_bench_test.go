package audit_test

import (
	"io"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/audit/audittest"
)

// BenchmarkAppendJSON is the audit line of one proxied request.
func BenchmarkAppendJSON(b *testing.B) {
	r := audittest.PodRecord(time.Date(2026, 11, 29, 16, 9, 1, 123456789, time.UTC))
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkJSONLogRecord is JSONLog.Record of one proxied request, the
// request's part of the JSON audit log's cost.
func BenchmarkJSONLogRecord(b *testing.B) {
	audittest.RecordPodInParallel(b, audit.NewJSONLog(io.Discard), time.Date(2026, 11, 29, 16, 9, 1, 123456789, time.UTC))
}
