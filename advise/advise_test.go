package advise

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policy"
)

func readFixture(t *testing.T) []Obs {
	t.Helper()
	f, err := os.Open("testdata/audit.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var l Log
	if err := l.Read("audit.jsonl", f); err != nil {
		t.Fatal(err)
	}
	l.Sort()
	return l.Records
}

// TestSuggest: the suggestion for the fixture is a valid policy; replayed
// against the same log it denies nothing that went through; it denies a
// host never seen; and it is the same bytes every time.
func TestSuggest(t *testing.T) {
	for _, tt := range []struct {
		name string
		opt  SuggestOptions
	}{
		{"by workload", SuggestOptions{}},
		{"by workload with paths", SuggestOptions{Paths: true}},
		{"by container", SuggestOptions{By: ByContainer, Paths: true}},
		{"by namespace", SuggestOptions{By: ByNamespace, Paths: true}},
		{"by exe", SuggestOptions{By: ByExe, Paths: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			recs := readFixture(t)
			out := Suggest(recs, tt.opt)
			if again := Suggest(readFixture(t), tt.opt); !bytes.Equal(out, again) {
				t.Fatalf("two runs differ:\n%s\n---\n%s", out, again)
			}
			if _, err := policy.Parse(out, "suggested.yaml"); err != nil {
				t.Fatalf("not a valid policy: %v\n%s", err, out)
			}
			if testing.Verbose() {
				t.Logf("\n%s", out)
			}
			j, err := NewJudge(out, "suggested.yaml")
			if err != nil {
				t.Fatal(err)
			}
			rep := Replay(j, recs)
			if rep.Denied() != 0 {
				var b strings.Builder
				rep.WriteText(&b, "suggested.yaml")
				t.Fatalf("replay denies what went through:\n%s\n%s", b.String(), out)
			}
			// A request to a host the log never shows is denied.
			never := recs[1]
			never.Host, never.Time = "exfil.example.net", recs[len(recs)-1].Time
			if v := j.Judge(&never); v.Outcome != outDeny || v.Rule != "default" {
				t.Fatalf("request to an unseen host: %+v, want deny by default", v)
			}
		})
	}
}
