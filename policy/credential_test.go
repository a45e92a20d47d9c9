package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testCreds: "api" (a file) bound to api.test and *.api.test, swapped in
// bodies; "env" (a variable) bound to env.test.
func testCreds(t testing.TB) *Credentials {
	t.Helper()
	file := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(file, []byte("file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return compileCredentials([]Credential{
		{Name: "api", File: file, Hosts: []string{"api.test", "*.api.test"}, Body: true},
		{Name: "env", Env: "SECRET_VAR", Hosts: []string{"env.test"}},
		{Name: "unset", Env: "UNSET_VAR", Hosts: []string{"api.test"}},
	}, func(k string) string { return map[string]string{"SECRET_VAR": "env-secret"}[k] })
}

func TestSubstitute(t *testing.T) {
	cs := testCreds(t)
	for _, tc := range []struct {
		name, in, host, want, denied string
		err                          bool
	}{
		{"nothing to swap", "Bearer mine", "api.test", "Bearer mine", "", false},
		{"bound host", "Bearer sluice:cred:api", "api.test", "Bearer file-secret", "", false},
		{"bound by wildcard", "sluice:cred:api", "eu.api.test", "file-secret", "", false},
		{"host case and trailing dot", "sluice:cred:api", "API.test.", "file-secret", "", false},
		{"two placeholders", "sluice:cred:env/sluice:cred:env", "env.test", "env-secret/env-secret", "", false},
		{"another host", "sluice:cred:api", "evil.test", "sluice:cred:api", "api", false},
		{"no bound name", "sluice:cred:api", "", "sluice:cred:api", "api", false},
		{"unknown credential", "sluice:cred:nope", "api.test", "sluice:cred:nope", "nope", false},
		{"one bound, one not: nothing swapped", "sluice:cred:api sluice:cred:env", "api.test", "sluice:cred:api sluice:cred:env", "env", false},
		{"unset variable", "sluice:cred:unset", "api.test", "sluice:cred:unset", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, sub, err := cs.Substitute(tc.in, tc.host)
			switch {
			case tc.err != (err != nil) || (err != nil && !errors.Is(err, ErrNoSecret)):
				t.Fatalf("error %v, want one: %v", err, tc.err)
			case err != nil && strings.Contains(err.Error(), "secret\n"):
				t.Fatalf("error holds a secret: %v", err)
			case got != tc.want || sub.Denied != tc.denied:
				t.Fatalf("got %q, denied %q; want %q, %q", got, sub.Denied, tc.want, tc.denied)
			}
		})
	}
}

// TestPlaceholderScanStraddle: a placeholder cut anywhere is swapped
// whole; one for another host is denied wherever it is cut.
func TestPlaceholderScanStraddle(t *testing.T) {
	cs := testCreds(t)
	body := `{"a":"` + strings.Repeat("x", 200) + `","key":"sluice:cred:api","z":1}`
	want := strings.Replace(body, "sluice:cred:api", "file-secret", 1)
	for cut := 0; cut <= len(body); cut++ {
		for _, host := range []string{"api.test", "evil.test"} {
			s := cs.NewPlaceholderScan(host)
			var out []byte
			var sub Substitution
			for _, p := range []string{body[:cut], body[cut:]} {
				b, su, err := s.Write([]byte(p))
				if err != nil {
					t.Fatal(err)
				}
				out, sub = append(out, b...), su
				if sub.Denied != "" {
					break
				}
			}
			if sub.Denied == "" {
				b, su, _ := s.Close()
				out, sub = append(out, b...), su
			}
			switch {
			case host == "api.test" && (string(out) != want || sub.Denied != ""):
				t.Fatalf("cut at %d: %q (denied %q), want %q", cut, out, sub.Denied, want)
			case host == "evil.test" && (sub.Denied != "api" || strings.Contains(string(out), "sluice:cred:")):
				t.Fatalf("cut at %d to evil.test: released %q, denied %q; want api denied before the placeholder", cut, out, sub.Denied)
			}
		}
	}
}

// TestCaptureSecretsDecision: a connection's capture keeps secrets only
// when every capturing rule that matches it says captureSecrets.
func TestCaptureSecretsDecision(t *testing.T) {
	e, err := Parse([]byte(`version: 1
rules:
  - {name: keep, destinations: {hosts: [keep.test]}, action: allow, capture: true, captureSecrets: true}
  - {name: redact, destinations: {hosts: [redact.test]}, action: allow, capture: true}
  - {name: both, destinations: {hosts: [keep.test, redact.test, both.test]}, action: allow, capture: true}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{"keep.test": false, "redact.test": false, "both.test": false} {
		d := e.Connection(t.Context(), &Conn{Host: host, Port: 443, TLS: true})
		if !d.Capture || d.CaptureSecrets != want {
			t.Errorf("%s: capture %v, captureSecrets %v; want true, %v", host, d.Capture, d.CaptureSecrets, want)
		}
	}
	e, err = Parse([]byte("version: 1\nrules:\n  - {name: keep, destinations: {hosts: [keep.test]}, action: allow, capture: true, captureSecrets: true}\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d := e.Connection(t.Context(), &Conn{Host: "keep.test", Port: 443, TLS: true}); !d.Capture || !d.CaptureSecrets {
		t.Errorf("keep.test alone: capture %v, captureSecrets %v; want both", d.Capture, d.CaptureSecrets)
	}
}

// FuzzPlaceholderScan: however a body is cut, the placeholder scanner
// forwards what it forwards for the whole body, and a body refused for
// a placeholder has released none of it.
func FuzzPlaceholderScan(f *testing.F) {
	f.Add([]byte(`{"key":"sluice:cred:api","n":1}`), uint16(12), true)
	f.Add([]byte(`sluice:cred:env sluice:cred:`), uint16(15), false)
	f.Add([]byte(`sluice:cresluice:cred:apix`), uint16(3), true)
	cs := testCreds(f)
	f.Fuzz(func(t *testing.T, body []byte, cut uint16, bound bool) {
		host := "evil.test"
		if bound {
			host = "api.test"
		}
		run := func(pieces ...[]byte) (string, string) {
			s := cs.NewPlaceholderScan(host)
			var out []byte
			for _, p := range pieces {
				b, sub, err := s.Write(p)
				if err != nil || sub.Denied != "" {
					return string(out), sub.Denied
				}
				out = append(out, b...)
			}
			b, sub, _ := s.Close()
			return string(append(out, b...)), sub.Denied
		}
		n := int(cut) % (len(body) + 1)
		whole, wd := run(bytes.Clone(body))
		out, d := run(bytes.Clone(body[:n]), bytes.Clone(body[n:]))
		if wd == "" && (d != "" || out != whole) {
			t.Fatalf("cut at %d: %q (denied %q), whole %q", n, out, d, whole)
		}
		if wd != "" && (d == "" || strings.Contains(out, "sluice:cred:"+d)) {
			t.Fatalf("cut at %d: released %q, denied %q; whole denied %q", n, out, d, wd)
		}
	})
}
