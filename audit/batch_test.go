package audit

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// writes counts the Writes a JSONLog makes and keeps their bytes.
type writes struct {
	n   int
	buf bytes.Buffer
}

func (w *writes) Write(p []byte) (int, error) {
	w.n++
	return w.buf.Write(p)
}

func batchRecords() []*Record {
	t := time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)
	var rs []*Record
	for i := range 3 {
		rs = append(rs, &Record{Time: t.Add(time.Duration(i) * time.Millisecond), Kind: KindConnect,
			DstIP: netip.MustParseAddr("198.18.0.1"), Port: uint16(9 + i), Decision: DecisionAllow})
	}
	return rs
}

// A batch is the same lines as the records one by one, in one write.
func TestJSONLogRecordBatchIsOneWriteOfTheSameLines(t *testing.T) {
	var one, batch writes
	for _, r := range batchRecords() {
		NewJSONLog(&one).Record(r)
	}
	NewJSONLog(&batch).RecordBatch(batchRecords())
	if batch.n != 1 {
		t.Errorf("%d writes for a batch of 3, want 1", batch.n)
	}
	if one.buf.String() != batch.buf.String() {
		t.Errorf("batch wrote\n%s\nrecords one by one wrote\n%s", batch.buf.String(), one.buf.String())
	}
}

type countSink struct{ ports []uint16 }

func (c *countSink) Record(r *Record) { c.ports = append(c.ports, r.Port) }

// Multi hands a batch to a sink without RecordBatch one record at a time,
// in order.
func TestMultiRecordBatchFansOut(t *testing.T) {
	var w writes
	plain := &countSink{}
	Multi{NewJSONLog(&w), plain}.RecordBatch(batchRecords())
	if w.n != 1 || bytes.Count(w.buf.Bytes(), []byte("\n")) != 3 {
		t.Errorf("json log: %d writes, %q", w.n, w.buf.String())
	}
	if len(plain.ports) != 3 || plain.ports[0] != 9 || plain.ports[2] != 11 {
		t.Errorf("plain sink got ports %v, want [9 10 11]", plain.ports)
	}
}
