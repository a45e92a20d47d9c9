package audit_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// slogLine is the audit line as log/slog's JSON handler writes it: the
// reference JSONLog's own encoder must match byte for byte.
func slogLine(r *audit.Record) []byte {
	var b bytes.Buffer
	h := slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})
	rec := slog.NewRecord(r.Time, slog.LevelInfo, audit.MsgAudit, 0)
	rec.AddAttrs(r.Attrs()...)
	_ = h.Handle(context.Background(), rec)
	return b.Bytes()
}

func jsonLogLine(r *audit.Record) []byte {
	var b bytes.Buffer
	audit.NewJSONLog(&b).Record(r)
	return b.Bytes()
}

// odd are strings that exercise every escape of both encoders.
var odd = []string{
	"", "plain", `quote " backslash \ slash /`, "<script>&amp;</script>", "tab\tnl\ncr\r",
	"bell\a bs\b ff\f nul\x00 esc\x1b del\x7f", "bad utf8 \xff\xfe end", "ls\u2028ps\u2029",
	"é 日本 🦀", "\xed\xa0\x80 surrogate",
}

func TestJSONLogMatchesSlog(t *testing.T) {
	for _, tc := range records {
		if got, want := jsonLogLine(&tc.r), slogLine(&tc.r); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want)
		}
	}
	for _, s := range odd {
		r := records[0].r
		r.Path, r.Error, r.MCPID, r.Workload.Cgroup = s, s, s, s
		r.Header = map[string]string{"X-" + s: s, "Accept": s}
		r.Detectors, r.MCPHidden = []string{s, s + "2"}, []string{s}
		r.Answers = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
		if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
			t.Errorf("%q:\n got %s\nwant %s", s, got, want)
		}
	}
	for _, d := range []time.Duration{0, time.Microsecond, 999 * time.Microsecond, 1234567 * time.Hour, -5 * time.Millisecond} {
		r := records[1].r
		r.Duration, r.UpstreamDuration = d, d
		if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
			t.Errorf("duration %v:\n got %s\nwant %s", d, got, want)
		}
	}
	for _, a := range []string{"192.0.2.7:443", "[2001:db8::7]:8443", "[fe80::1%eth\"0]:80", "[::ffff:192.0.2.9]:1"} {
		r := records[1].r
		r.Workload.Client = netip.MustParseAddrPort(a)
		r.DstIP = r.Workload.Client.Addr()
		r.Port, r.Status, r.Workload.PID, r.Workload.UID = 0, 0, 0, 7 // left out: no port, status or process
		if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
			t.Errorf("address %s:\n got %s\nwant %s", a, got, want)
		}
	}
	// DNS answers as slog renders a.String(): the zero address too
	// ("invalid IP"), which AppendTo would leave empty, and a zone.
	r := records[1].r
	r.Answers = []netip.Addr{netip.MustParseAddr("192.0.2.1"), {}, netip.MustParseAddr("fe80::1%eth0")}
	if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
		t.Errorf("answers:\n got %s\nwant %s", got, want)
	}
	r = records[1].r
	r.Time = time.Time{} // slog leaves the time out
	if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
		t.Errorf("zero time:\n got %s\nwant %s", got, want)
	}
	r.Time = time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("x", 3600))
	if got, want := jsonLogLine(&r), slogLine(&r); !bytes.Equal(got, want) {
		t.Errorf("zoned time:\n got %s\nwant %s", got, want)
	}
}

// TestJSONLogEveryField: a record with every field set renders as slog
// does, keys in the order of auditFields, through a fresh log and
// through one that has seen the workload (its cached fragment).
func TestJSONLogEveryField(t *testing.T) {
	r := audit.FullRecordForTest()
	want := slogLine(&r)
	var b bytes.Buffer
	l := audit.NewJSONLog(&b)
	for i := range 3 {
		b.Reset()
		l.Record(&r)
		if !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("line %d:\n got %s\nwant %s", i, b.Bytes(), want)
		}
	}
}

func TestJSONLogAllocs(t *testing.T) {
	r := records[1].r
	l := audit.NewJSONLog(discardWriter{})
	l.Record(&r)
	if n := testing.AllocsPerRun(100, func() { l.Record(&r) }); n > 1 {
		t.Errorf("JSONLog.Record allocates %.0f times per record, want at most 1 (the workload's name)", n)
	}
}

type discardWriter struct{}

func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }

func FuzzJSONLogMatchesSlog(f *testing.F) {
	for _, s := range odd {
		f.Add(s, s, int64(1234))
	}
	// warm lives across inputs: the workloads of earlier inputs sit in
	// its cache when a later one is written.
	var wb bytes.Buffer
	warm := audit.NewJSONLog(&wb)
	f.Fuzz(func(t *testing.T, a, b string, us int64) {
		r := records[0].r
		r.Path, r.Host, r.Error, r.Workload.Comm = a, b, a+b, b
		r.Header = map[string]string{a: b, "User-Agent": a}
		r.Detectors = []string{a, b}
		r.Duration = time.Duration(us) * time.Microsecond
		r.Workload.PID = int(us % 100)
		if len(a) > 0 {
			r.Workload.Labels = map[string]string{a: b}
		}
		want := slogLine(&r)
		if got := jsonLogLine(&r); !bytes.Equal(got, want) {
			t.Errorf("\n got %s\nwant %s", got, want)
		}
		wb.Reset()
		warm.Record(&r)
		if got := wb.Bytes(); !bytes.Equal(got, want) {
			t.Errorf("warm log:\n got %s\nwant %s", got, want)
		}
	})
}
