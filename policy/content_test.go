package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inspector compiles one content section from YAML.
func inspector(t testing.TB, content string) *Inspector {
	t.Helper()
	e, err := Parse([]byte("version: 1\nrules:\n  - name: api\n    action: allow\n    destinations: {hosts: [api.test]}\n    content:\n"+content), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return e.rules[0].content
}

// streamScan feeds body to a BodyScan in pieces cut at cuts and returns
// what it released, the block finding and the detectors noted.
func streamScan(in *Inspector, body string, cuts ...int) (string, *Finding, []string) {
	var names []string
	s := in.NewBodyScan(func(f Finding) { names = append(names, f.Detector) })
	var out bytes.Buffer
	last := 0
	for _, c := range append(cuts, len(body)) {
		b, f := s.Write([]byte(body[last:c]))
		out.Write(b)
		if f != nil {
			return out.String(), f, names
		}
		last = c
	}
	b, f := s.Close()
	out.Write(b)
	return out.String(), f, names
}

// TestBodyScanStraddle: a secret cut in two at any byte is found and
// redacted whole, and the body keeps its length.
func TestBodyScanStraddle(t *testing.T) {
	in := inspector(t, "      match: [{detectors: [all], action: redact}]\n")
	body := `{"note":"` + strings.Repeat("x", 100) + `","key":"` + awsKeyID + `","after":"done"}`
	at := strings.Index(body, awsKeyID)
	want := strings.Replace(body, awsKeyID, "REDACTEDREDACTEDREDA", 1)
	for cut := at - 2; cut <= at+len(awsKeyID)+2; cut++ {
		got, f, names := streamScan(in, body, cut)
		if got != want || f != nil || len(names) != 1 || names[0] != "aws-access-key-id" {
			t.Fatalf("cut at %d: released %q, block %v, found %v; want %q", cut, got, f, names, want)
		}
	}
}

// TestBodyScanHoldsBackAWindow: a long body is released as it streams,
// holding back only the overlap window, and a secret far from the start
// is still found.
func TestBodyScanHoldsBackAWindow(t *testing.T) {
	in := inspector(t, "      match: [{detectors: [aws-access-key-id], action: block}]\n")
	s := in.NewBodyScan(nil)
	chunk := bytes.Repeat([]byte("a"), 32<<10)
	released := 0
	for range 4 {
		b, f := s.Write(chunk)
		if f != nil {
			t.Fatalf("block on plain bytes: %v", f)
		}
		released += len(b)
	}
	if held := 4*len(chunk) - released; held != maxMatch {
		t.Fatalf("held back %d bytes, want the window of %d", held, maxMatch)
	}
	_, f := s.Write([]byte(" " + awsKeyID[:10]))
	if f != nil {
		t.Fatalf("block on half a key: %v", f)
	}
	// The key is judged once what follows it is known: with the window
	// of bytes after it, or at the body's end.
	if _, f = s.Write([]byte(awsKeyID[10:] + " ")); f != nil {
		t.Fatalf("block %v before the bytes after the key are known", f)
	}
	if _, f = s.Write(chunk[:maxMatch]); f == nil || f.Detector != "aws-access-key-id" || f.Action != ActionBlock {
		t.Fatalf("block finding %v, want aws-access-key-id", f)
	}
}

// TestInspectorActions: what each action does, where it looks.
func TestInspectorActions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		content   string
		part, in  string
		wantOut   string
		wantFound string // detector; "" for none
		wantBlock bool
	}{
		{"block in body", "      match: [{detectors: [aws-access-key-id], action: block}]\n", InBody, "k=" + awsKeyID, "k=" + awsKeyID, "aws-access-key-id", true},
		{"redact keeps the length", "      match: [{detectors: [aws-access-key-id], action: redact}]\n", InBody, "k=" + awsKeyID + ";", "k=REDACTEDREDACTEDREDA;", "aws-access-key-id", false},
		{"audit leaves it", "      match: [{detectors: [all], action: audit}]\n", InHeaders, "Bearer " + githubToken, "Bearer " + githubToken, "github-token", false},
		{"in: [body] does not look at headers", "      match: [{detectors: [all], action: block, in: [body]}]\n", InHeaders, awsKeyID, awsKeyID, "", false},
		{"a pattern", "      match: [{patterns: [{name: ticket, regex: 'ACME-[0-9]{6}'}], action: redact, in: [url]}]\n", InURL, "/t/ACME-123456?x", "/t/REDACTEDRED?x", "ticket", false},
		{"block wins over an earlier redact", "      match: [{detectors: [jwt], action: redact}, {detectors: [aws-access-key-id], action: block}]\n", InBody, jwtToken + " " + awsKeyID, "", "aws-access-key-id", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := inspector(t, tc.content)
			b := []byte(tc.in)
			fs := in.Scan(b, tc.part, true)
			switch {
			case tc.wantFound == "" && len(fs) > 0:
				t.Fatalf("found %v, want nothing", fs)
			case tc.wantFound != "" && (len(fs) == 0 || fs[0].Detector != tc.wantFound):
				t.Fatalf("found %v, want %s first", fs, tc.wantFound)
			case tc.wantBlock != (len(fs) > 0 && fs[0].Action == ActionBlock):
				t.Fatalf("found %v, want block %v", fs, tc.wantBlock)
			case !tc.wantBlock && string(b) != tc.wantOut:
				t.Fatalf("scanned to %q, want %q", b, tc.wantOut)
			}
		})
	}
}

// TestContentProblems: mistakes in content, headers, logBodies and
// credentials are reported with their path and the fix.
func TestContentProblems(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown detector", "rules:\n  - name: a\n    action: allow\n    content: {match: [{detectors: [aws-acess-key-id], action: block}]}\n",
			`rules[0].content.match[0].detectors[0] "aws-acess-key-id": unknown detector: did you mean "aws-access-key-id"?`},
		{"bad regex", "rules:\n  - name: a\n    action: allow\n    content: {match: [{patterns: [{name: x, regex: '(a'}], action: block}]}\n",
			`rules[0].content.match[0].patterns[0].regex "(a": not an RE2 regular expression`},
		{"empty-matching regex", "rules:\n  - name: a\n    action: allow\n    content: {match: [{patterns: [{name: x, regex: 'a*'}], action: audit}]}\n",
			`matches the empty string`},
		{"bad action", "rules:\n  - name: a\n    action: allow\n    content: {match: [{detectors: [all], action: drop}]}\n",
			`rules[0].content.match[0].action "drop": use block, redact or audit`},
		{"bad part", "rules:\n  - name: a\n    action: allow\n    content: {match: [{detectors: [all], action: block, in: [cookies]}]}\n",
			`rules[0].content.match[0].in[0] "cookies": use headers, url or body`},
		{"content on a deny rule", "rules:\n  - name: a\n    action: deny\n    content: {match: [{detectors: [all], action: block}]}\n",
			`rules[0].content: a deny rule forwards nothing: move content to an allow rule`},
		{"bad onUninspectable", "rules:\n  - name: a\n    action: allow\n    content: {onUninspectable: pass, match: [{detectors: [all], action: block}]}\n",
			`rules[0].content.onUninspectable "pass": use block or allow`},
		{"credential without a source", "credentials:\n  - {name: openai, hosts: [api.openai.com]}\n",
			`credentials[0]: no secret source: set file`},
		{"credential bound to every host", "credentials:\n  - {name: openai, env: OPENAI_API_KEY, hosts: ['*']}\n",
			`credentials[0].hosts[0] "*": a credential bound to every host protects nothing`},
		{"unknown credential", "rules:\n  - name: a\n    action: allow\n    destinations: {hosts: [api.openai.com]}\n    headers: {request: {set: {Authorization: 'Bearer ${cred:openai}'}}}\n",
			`rules[0].headers.request.set.Authorization "${cred:openai}": no credential named "openai": add it under credentials`},
		{"credential to a host it is not bound to", "credentials:\n  - {name: openai, env: OPENAI_API_KEY, hosts: [api.openai.com]}\nrules:\n  - name: a\n    action: allow\n    destinations: {hosts: ['*.example.com']}\n    headers: {request: {set: {Authorization: 'Bearer ${cred:openai}'}}}\n",
			`the rule matches "*.example.com" but credential "openai" is bound to api.openai.com`},
		{"credential in a response header", "credentials:\n  - {name: openai, env: OPENAI_API_KEY, hosts: [api.openai.com]}\nrules:\n  - name: a\n    action: allow\n    destinations: {hosts: [api.openai.com]}\n    headers: {response: {set: {X-K: '${cred:openai}'}}}\n",
			`credentials go to upstreams only`},
		{"bad log size", "rules:\n  - name: a\n    action: allow\n    logBodies: {request: 4 lines}\n",
			`rules[0].logBodies.request "4 lines": unknown unit`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte("version: 1\n"+tc.yaml), "p.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestBodyScanSecretAnyOffset: each kind of secret, at offsets around
// the held-back window's edges, in ordinary JSON read in pieces of
// several sizes (so that it straddles reads and the window), is found
// and redacted as in the whole body.
func TestBodyScanSecretAnyOffset(t *testing.T) {
	files, _ := filepath.Glob("testdata/content/*.json")
	var filler []byte
	for _, p := range files {
		b, _ := os.ReadFile(p)
		filler = append(filler, b...)
	}
	filler = bytes.Repeat(filler, 4*maxMatch/len(filler)+2)
	in := Redactor()
	for _, secret := range []string{
		`"` + awsKeyID + `"`, "aws_secret_access_key = " + awsSecret + "\n", githubToken, `"` + openAIKey + `"`,
		"x-api-key: " + anthKey + "\r\n", " " + jwtToken + " ", pemKey, `{"api_key":"Zx9Qm2Lp8Rt4Vn6Wb1Ks"}`,
		"AccountName=acct01;AccountKey=" + azureKey + ";",
	} {
		for _, off := range []int{0, 1, 100, maxMatch - len(secret) + 3, maxMatch, maxMatch + 1, 2*maxMatch - 7, 3*maxMatch + 11} {
			body := string(filler[:off]) + " " + secret + " " + string(filler[:maxMatch/2])
			whole := []byte(body)
			if len(in.Scan(whole, InBody, true)) == 0 {
				t.Fatalf("no finding in %q", secret)
			}
			for _, piece := range []int{7, 1000, 4 << 10, 32 << 10} {
				var cuts []int
				for c := piece; c < len(body); c += piece {
					cuts = append(cuts, c)
				}
				got, f, names := streamScan(in, body, cuts...)
				if got != string(whole) || f != nil || len(names) == 0 {
					t.Fatalf("%.20q at %d in pieces of %d: released differs from the whole body's scan (found %v)", secret, off, piece, names)
				}
			}
		}
	}
}

// TestBodyScanFlush: at a pause, a stream releases everything but what
// a secret still being written could cover; the rest goes when the body
// goes on, and a secret completed by the next bytes is still redacted.
func TestBodyScanFlush(t *testing.T) {
	in := Redactor()
	for _, tc := range []struct {
		name, first, second string
		held                string // the end of first that Flush holds
	}{
		{"ordinary JSON goes", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello"}]}`, "\n", ""},
		{"an SSE line goes", "data: {\"delta\":\"the token bucket\"}\n\n", "data: [DONE]\n\n", ""},
		{"half a key id is held", `{"note":"x","k":"AKIAZ7QH`, `4M2KXW3PL5TB"}`, `AKIAZ7QH`},
		{"a key id not yet judged is held", `{"k":"` + awsKeyID, `"}`, awsKeyID},
		{"the start of a start is held", `{"k":"AK`, `IAZ7QH4M2KXW3PL5TB"}`, `AK`},
		{"an assignment without its value is held", `{"n":1,"api_key": "Zx9Q`, `m2Lp8Rt4Vn6Wb1Ks"}`, `api_key": "Zx9Q`},
		{"a name cut by the pause is held", `{"n":1,"passw`, `ord":"Zx9Qm2Lp8Rt4Vn6Wb1Ks"}`, `passw`},
		{"an OpenAI key before its marker is held", `{"k":"sk-proj-abcDEF1234567890gh`, `ijT3BlbkFJklmNOP0987654321qrst"}`, `sk-proj-abcDEF1234567890gh`},
		{"a PEM header line is held", "{\"k\":\"-----BEGIN RSA PRIV", "ATE KEY-----\\nMIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2\\n-----END RSA PRIVATE KEY-----\"}", "-----BEGIN RSA PRIV"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := in.NewBodyScan(nil)
			out, f := s.Write([]byte(tc.first))
			if len(out) != 0 || f != nil {
				t.Fatalf("Write released %q (block %v) before the window filled", out, f)
			}
			out, f = s.Flush()
			want := tc.first[:len(tc.first)-len(tc.held)]
			if string(out) != want || f != nil || s.Held() != len(tc.held) {
				t.Fatalf("Flush released %q (block %v), holding %d; want %q, holding %q", out, f, s.Held(), want, tc.held)
			}
			rest, _ := s.Write([]byte(tc.second))
			end, _ := s.Close()
			body := tc.first + tc.second
			whole := []byte(body)
			in.Scan(whole, InBody, true)
			if got := string(out) + string(rest) + string(end); got != string(whole) {
				t.Fatalf("released %q, want %q", got, whole)
			}
		})
	}
}
