package logsum

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

// FuzzParseLine checks that ParseLine never panics and that whatever it
// accepts survives a round trip through MarshalLine.
func FuzzParseLine(f *testing.F) {
	f.Add([]byte(`{"time":"2026-11-25T08:00:00.5Z","level":"INFO","msg":"audit","kind":"http","pid":7,"uid":0,"comm":"python3","workload":"ns/p","host":"api.example.com","method":"GET","path":"/x","status":429,"source":"sluice","bytes_in":3,"bytes_out":4,"duration_ms":1.5,"decision":"deny","rule":"rl","reason":"rate limit exceeded"}`))
	f.Add([]byte(`{"msg":"started"}`))
	f.Add([]byte(`{"kind":"l4"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"msg":"audit","status":1e3}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseLine(line)
		if err != nil {
			if !errors.Is(err, ErrNotAudit) && e != (Entry{}) {
				t.Fatalf("error %v with a non-zero entry", err)
			}
			return
		}
		b, err := MarshalLine(e)
		if err != nil {
			// A time outside what JSON can carry (year > 9999) cannot be
			// re-encoded; that is encoding/json's limit, not ours.
			if e.Time.Year() > 9999 || e.Time.Year() < 0 {
				return
			}
			t.Fatalf("MarshalLine(%+v): %v", e, err)
		}
		e2, err := ParseLine(b)
		if err != nil {
			t.Fatalf("ParseLine(MarshalLine(%+v)) = %v\n%s", e, err, b)
		}
		if !e.Time.Equal(e2.Time) {
			t.Fatalf("time %s became %s", e.Time, e2.Time)
		}
		e.Time, e2.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, e2)
		}
	})
}

// FuzzRead feeds arbitrary bytes (plain or gzip) to a Summarizer: it must
// not panic, and every non-empty line must be exactly one of a record, a
// skipped line or an unparseable one.
func FuzzRead(f *testing.F) {
	f.Add([]byte("{\"msg\":\"audit\",\"kind\":\"http\",\"status\":429,\"source\":\"sluice\"}\n\ngarbage\n{\"msg\":\"x\"}"))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		s := New()
		_ = s.Read("f", bytes.NewReader(in))
		sum := s.Summary(3)
		if sum.Lines != sum.Records+sum.Skipped+sum.Unparseable {
			t.Fatalf("lines %d != records %d + skipped %d + unparseable %d", sum.Lines, sum.Records, sum.Skipped, sum.Unparseable)
		}
		var b bytes.Buffer
		if err := WriteText(&b, sum); err != nil {
			t.Fatal(err)
		}
	})
}
