package mitm

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// awsKeyID is a made-up AWS access key id, built in two pieces.
var awsKeyID = "AKIA" + "Z7QH4M2KXW3PL5TB"

// carryDecision is the decision of a policy whose only rule, "api",
// allows api.test with the given extra YAML (content, headers,
// credentials under the rule), for a request to api.test.
func carryDecision(t testing.TB, top, rule string) policy.Decision {
	t.Helper()
	y := "version: 1\n" + top + "rules:\n  - name: api\n    action: allow\n    destinations: {hosts: [api.test]}\n" + rule
	e, err := policy.ParseWith([]byte(y), "p.yaml", policy.Options{Getenv: func(k string) string {
		return map[string]string{"API_TOKEN": "real-secret-value-42"}[k]
	}})
	if err != nil {
		t.Fatal(err)
	}
	return e.Request(context.Background(), &policy.Request{Host: "api.test", Method: "POST", Path: "/"})
}

// readWrapped reads r's body through the wrappers the chain added.
func readWrapped(x *Exchange) (string, error) {
	var body io.ReadCloser = x.Req.Body
	for _, w := range x.wraps {
		body = w(body)
	}
	b, err := io.ReadAll(body)
	return string(b), err
}

// oneByte reads one byte at a time: a body that reaches the proxy in
// the smallest pieces.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(1, len(p))]) }

func zl(s string) string {
	var b bytes.Buffer
	z := zlib.NewWriter(&b)
	_, _ = z.Write([]byte(s))
	_ = z.Close()
	return b.String()
}

func rawDeflate(s string) string {
	var b bytes.Buffer
	z, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = z.Write([]byte(s))
	_ = z.Close()
	return b.String()
}

func gz(s string) string {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	_, _ = z.Write([]byte(s))
	_ = z.Close()
	return b.String()
}

func brEnc(s string) string {
	var b bytes.Buffer
	z := brotli.NewWriter(&b)
	_, _ = z.Write([]byte(s))
	_ = z.Close()
	return b.String()
}

func zstdEnc(s string) string {
	z, _ := zstd.NewWriter(nil)
	defer z.Close()
	return string(z.EncodeAll([]byte(s), nil))
}

func TestContentStage(t *testing.T) {
	const block = "    content: {match: [{detectors: [all], action: block}]}\n"
	const redact = "    content: {match: [{detectors: [all], action: redact}]}\n"
	const audit_ = "    content: {match: [{detectors: [all], action: audit}]}\n"
	marker := "REDACTEDREDACTEDREDA"
	for _, tc := range []struct {
		name       string
		rule       string
		url        string
		header     http.Header
		body       string
		chunked    bool // no Content-Length, one byte per read
		want       *answerWant
		wantAbort  int    // status of a refused body; 0 for none
		wantBody   string // what the upstream reads
		wantURL    string
		wantHeader string // X-Key after the stage
		wantFound  []string
	}{
		{name: "no content rule: nothing looked at", url: "/?k=" + awsKeyID, body: awsKeyID, wantBody: awsKeyID, wantURL: "/?k=" + awsKeyID},
		{name: "block: a key in the query, 400 before sending", rule: block, url: "/?k=" + awsKeyID,
			want: &answerWant{400, "deny", "api", audit.ReasonContentBlocked}, wantFound: []string{"aws-access-key-id"}},
		{name: "block: a key in a header", rule: block, url: "/", header: http.Header{"X-Key": {awsKeyID}},
			want: &answerWant{400, "deny", "api", audit.ReasonContentBlocked}, wantFound: []string{"aws-access-key-id"}},
		{name: "block: a key in the body refuses it", rule: block, url: "/", body: `{"k":"` + awsKeyID + `"}`, wantAbort: 400, wantFound: []string{"aws-access-key-id"}},
		{name: "block: a key split over one-byte reads of a chunked body", rule: block, url: "/", body: `{"k":"` + awsKeyID + `"}`, chunked: true, wantAbort: 400, wantFound: []string{"aws-access-key-id"}},
		{name: "redact: query, header and body get the marker", rule: redact, url: "/p?k=" + awsKeyID, header: http.Header{"X-Key": {awsKeyID}},
			body: `{"k":"` + awsKeyID + `"}`, wantBody: `{"k":"` + marker + `"}`, wantURL: "/p?k=" + marker, wantHeader: marker, wantFound: []string{"aws-access-key-id"}},
		{name: "redact: chunked, one byte at a time", rule: redact, url: "/", body: strings.Repeat("x", 10000) + " " + awsKeyID + "!", chunked: true,
			wantBody: strings.Repeat("x", 10000) + " " + marker + "!", wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "audit: forwarded as is, recorded", rule: audit_, url: "/", body: "k=" + awsKeyID, wantBody: "k=" + awsKeyID, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "gzip body inspected decompressed", rule: block, url: "/", header: http.Header{"Content-Encoding": {"gzip"}}, body: gz(`{"k":"` + awsKeyID + `"}`),
			wantAbort: 400, wantFound: []string{"aws-access-key-id"}},
		{name: "gzip body forwarded decompressed, redacted", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"gzip"}}, body: gz("k=" + awsKeyID),
			wantBody: "k=" + marker, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "deflate (zlib) body redacted", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"deflate"}}, body: zl("k=" + awsKeyID),
			wantBody: "k=" + marker, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "raw deflate body redacted", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"deflate"}}, body: rawDeflate("k=" + awsKeyID),
			wantBody: "k=" + marker, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "a broken gzip body is refused", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"gzip"}}, body: "not gzip at all", wantAbort: 400},
		{name: "past maxDecompressed: blocked by default", rule: "    content: {maxDecompressed: 1KB, match: [{detectors: [all], action: block}]}\n", url: "/",
			header: http.Header{"Content-Encoding": {"gzip"}}, body: gz(strings.Repeat("a", 5000)), wantAbort: 400},
		{name: "past maxDecompressed: allowed uninspected", rule: "    content: {maxDecompressed: 1KB, onUninspectable: allow, match: [{detectors: [all], action: block}]}\n", url: "/",
			header: http.Header{"Content-Encoding": {"gzip"}}, body: gz(strings.Repeat("a", 5000) + awsKeyID), wantBody: strings.Repeat("a", 5000) + awsKeyID, wantURL: "/"},
		{name: "brotli body redacted", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"br"}}, body: brEnc("k=" + awsKeyID),
			wantBody: "k=" + marker, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "zstd body inspected decompressed", rule: block, url: "/", header: http.Header{"Content-Encoding": {"zstd"}}, body: zstdEnc(`{"k":"` + awsKeyID + `"}`),
			wantAbort: 400, wantFound: []string{"aws-access-key-id"}},
		{name: "zstd body redacted", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"zstd"}}, body: zstdEnc("k=" + awsKeyID),
			wantBody: "k=" + marker, wantURL: "/", wantFound: []string{"aws-access-key-id"}},
		{name: "zstd past maxDecompressed: blocked by default", rule: "    content: {maxDecompressed: 1KB, match: [{detectors: [all], action: block}]}\n", url: "/",
			header: http.Header{"Content-Encoding": {"zstd"}}, body: zstdEnc(strings.Repeat("a", 5000)), wantAbort: 400},
		{name: "a broken zstd body is refused", rule: redact, url: "/", header: http.Header{"Content-Encoding": {"zstd"}}, body: "not zstd at all", wantAbort: 400},
		{name: "an unknown encoding can't be inspected: 400", rule: block, url: "/", header: http.Header{"Content-Encoding": {"compress"}}, body: "\x1f\x9d\x90",
			want: &answerWant{400, "deny", "api", audit.ReasonUninspectable}},
		{name: "an unknown encoding with onUninspectable: allow", rule: "    content: {onUninspectable: allow, match: [{detectors: [all], action: block}]}\n", url: "/",
			header: http.Header{"Content-Encoding": {"compress"}}, body: "\x1f\x9d\x90", wantBody: "\x1f\x9d\x90", wantURL: "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stageFlow(t, nil)
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = oneByte{body}
			}
			r := httptest.NewRequest("POST", "https://api.test"+tc.url, body)
			if tc.chunked {
				r.ContentLength = -1
			}
			for k, v := range tc.header {
				r.Header[k] = slices.Clone(v)
			}
			x := stageExchange(f, r)
			x.Decision = carryDecision(t, "", tc.rule)
			checkAnswer(t, contentStage{}.Request(x), tc.want)
			if tc.want == nil {
				got, err := readWrapped(x)
				a := x.aborted.Load()
				switch {
				case tc.wantAbort != 0 && (a == nil || a.Status != tc.wantAbort || err == nil):
					t.Fatalf("read %q, %v, abort %+v; want the body refused with %d", got, err, a, tc.wantAbort)
				case tc.wantAbort == 0 && (err != nil || a != nil || got != tc.wantBody):
					t.Fatalf("read %q, %v, abort %+v; want %q", got, err, a, tc.wantBody)
				case tc.wantAbort == 0 && r.URL.RequestURI() != tc.wantURL:
					t.Fatalf("URL %q, want %q", r.URL.RequestURI(), tc.wantURL)
				case tc.wantHeader != "" && r.Header.Get("X-Key") != tc.wantHeader:
					t.Fatalf("X-Key %q, want %q", r.Header.Get("X-Key"), tc.wantHeader)
				}
				if a != nil && a.Body != nil && bytes.Contains(a.Body, []byte(awsKeyID)) {
					t.Fatalf("the answer echoes the secret: %s", a.Body)
				}
			}
			x.finish()
			if !slices.Equal(x.Record.Detectors, tc.wantFound) {
				t.Fatalf("record detectors %v, want %v", x.Record.Detectors, tc.wantFound)
			}
		})
	}
}

// TestContentRecordPath: a secret in the path is out of the record's
// path whatever the action.
func TestContentRecordPath(t *testing.T) {
	for _, action := range []string{"block", "redact", "audit"} {
		f := stageFlow(t, nil)
		r := httptest.NewRequest("GET", "https://api.test/keys/"+awsKeyID+"/x", nil)
		x := stageExchange(f, r)
		x.Record.Path = r.URL.EscapedPath()
		x.Decision = carryDecision(t, "", "    content: {match: [{detectors: [aws-access-key-id], action: "+action+"}]}\n")
		contentStage{}.Request(x)
		if x.Record.Path != "/keys/REDACTEDREDACTEDREDA/x" {
			t.Errorf("%s: record path %q, want the key redacted", action, x.Record.Path)
		}
	}
}

// TestContentAnswerBody: the 400 says rule, detector and where, as JSON.
func TestContentAnswerBody(t *testing.T) {
	f := stageFlow(t, nil)
	x := stageExchange(f, httptest.NewRequest("GET", "https://api.test/?k="+awsKeyID, nil))
	x.Decision = carryDecision(t, "", "    content: {match: [{detectors: [all], action: block}]}\n")
	a := contentStage{}.Request(x)
	var body map[string]string
	if a == nil || json.Unmarshal(a.Body, &body) != nil {
		t.Fatalf("answer %+v", a)
	}
	want := map[string]string{"error": "Bad Request", "rule": "api", "reason": audit.ReasonContentBlocked, "detector": "aws-access-key-id", "in": "url"}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("body[%q] = %q, want %q (body %s)", k, body[k], v, a.Body)
		}
	}
}

// TestContentSlowStreamFlushes: a client streaming a body in small
// pieces with pauses, under a body content rule, over HTTP/1.1 (chunked)
// and HTTP/2: the upstream gets each piece's safe bytes before the client
// sends the next (not once 8KiB gather), and a key split between two
// pieces still reaches it redacted, with nothing of it sent early.
func TestContentSlowStreamFlushes(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) {
			tca := newTestCA(t, "upstream test CA")
			dec := &fakeDecider{req: func(*policy.Request) policy.Decision {
				return carryDecision(t, "", "    content: {match: [{detectors: [all], action: redact}]}\n")
			}}
			h := newHarness(t, tca, dec)
			got := make(chan string, 16)
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				buf := make([]byte, 4096)
				for {
					n, err := r.Body.Read(buf)
					if n > 0 {
						got <- string(buf[:n])
					}
					if err != nil {
						break
					}
				}
				close(got)
			}))
			pieces := []string{
				`{"model":"gpt-4o","stream":true,"messages":[`,
				`{"role":"user","content":"first"},`,
				`{"role":"user","content":"key AKIA`, // held from AKIA
				`Z7QH4M2KXW3PL5TB ok"}]}`,
			}
			want := []string{pieces[0], pieces[1], `{"role":"user","content":"key `}
			pr, pw := io.Pipe()
			req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/stream", up.addr.Port()), pr)
			done := make(chan error, 1)
			go func() {
				resp, err := h.client(h2).Do(req)
				if err == nil {
					resp.Body.Close()
				}
				done <- err
			}()
			var all strings.Builder
			for i, p := range pieces {
				if _, err := pw.Write([]byte(p)); err != nil {
					t.Fatal(err)
				}
				if i == len(pieces)-1 {
					break
				}
				// What is safe of this piece arrives before the next is sent.
				var seen strings.Builder
				for seen.String() != want[i] {
					select {
					case s := <-got:
						seen.WriteString(s)
					case <-time.After(5 * time.Second):
						t.Fatalf("piece %d: the upstream got %q of %q before the client sent more", i, seen.String(), want[i])
					}
					if !strings.HasPrefix(want[i], seen.String()) {
						t.Fatalf("piece %d: the upstream got %q, want %q", i, seen.String(), want[i])
					}
				}
				all.WriteString(seen.String())
			}
			pw.Close()
			for s := range got {
				all.WriteString(s)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			body := strings.Join(pieces, "")
			if wantAll := strings.Replace(body, awsKeyID, "REDACTEDREDACTEDREDA", 1); all.String() != wantAll {
				t.Fatalf("the upstream got %q, want %q", all.String(), wantAll)
			}
		})
	}
}

// TestContentBodyLastReadWithEOF: a body whose last read brings bytes
// and io.EOF together (as many readers do), longer than the scanner's
// window, arrives whole and redacted: the bytes released by that read
// are not overwritten by the scanner's end of body.
func TestContentBodyLastReadWithEOF(t *testing.T) {
	body := strings.Repeat(`{"role":"user","content":"hello"},`, 1500) + `"` + awsKeyID + `"`
	f := stageFlow(t, nil)
	r := httptest.NewRequest("POST", "https://api.test/", nil)
	r.Body, r.ContentLength = io.NopCloser(iotest.DataErrReader(strings.NewReader(body))), int64(len(body))
	x := stageExchange(f, r)
	x.Decision = carryDecision(t, "", "    content: {match: [{detectors: [all], action: redact}]}\n")
	if a := (contentStage{}).Request(x); a != nil {
		t.Fatalf("answer %+v", a)
	}
	got, err := readWrapped(x)
	if want := strings.Replace(body, awsKeyID, "REDACTEDREDACTEDREDA", 1); err != nil || got != want {
		t.Fatalf("read %d bytes (%v), want %d bytes, the key redacted; differ at %d: %q", len(got), err, len(want), firstDiff(got, want), got[firstDiff(got, want):])
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
