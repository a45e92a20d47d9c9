package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`version: 1
mode: strict
rules:
  - name: a
    action: allow
    destinations:
      hosts: ["*foo.com"]
      methods: [get]
  - name: b
    action: permit
    limits: {requestBody: 10m}
    rateLimt: {minute: 5}
`), 0o644)
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("version: 1\nrules: [{name: a, action: deny, destinations: {hosts: [x.example]}}]\n"), 0o644)

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"every problem with its line", []string{"check", bad}, 1, "", bad + `:2: mode "strict": use enforce or audit
` + bad + `:7: rules[0].destinations.hosts[0] "*foo.com": a wildcard must be a whole label, use "*.foo.com"
` + bad + `:8: rules[0].destinations.methods[0] "get": methods are upper case, use "GET"
` + bad + `:10: rules[1].action "permit": use allow or deny
` + bad + `:11: rules[1].limits.requestBody "10m": unknown unit "m": use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "10MB"
` + bad + `:12: rules[1].rateLimt: unknown key in rules[1]: did you mean "rateLimit"? known keys are name, workloads, destinations, action, mode, rateLimit, limits, capture, mcp, cache, content, headers, logBodies, captureSecrets
` + bad + ": 6 problem(s)\n"},
		{"ok", []string{"check", good}, 0, good + ": ok\n", ""},
		{"several files", []string{"check", good, filepath.Join(dir, "missing.yaml")}, 1, good + ": ok\n", "sluice policy check: open " + filepath.Join(dir, "missing.yaml") + ": no such file or directory\n"},
		{"no file", []string{"check"}, 2, "", policyUsage},
		{"no subcommand", nil, 2, "", policyUsage},
		{"unknown subcommand", []string{"lint"}, 2, "", "sluice policy: unknown subcommand \"lint\"\n\n" + policyUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := dispatch(context.Background(), append([]string{"policy"}, tt.args...), &out, &errb)
			if code != tt.code || out.String() != tt.stdout || errb.String() != tt.stderr {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, stdout:\n%s\nstderr:\n%s", code, out.String(), errb.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestPolicySchemaAndDefault(t *testing.T) {
	for sub, want := range map[string]string{"schema": `"$schema": "https://json-schema.org/draft/2020-12/schema"`, "default": "version: 1"} {
		var out, errb bytes.Buffer
		if code := dispatch(context.Background(), []string{"policy", sub}, &out, &errb); code != 0 || !strings.Contains(out.String(), want) {
			t.Errorf("policy %s: exit %d, output %.80q", sub, code, out.String())
		}
	}
}

// Selectors by runtime metadata (namespaces, labels, containers, images)
// pass without a warning; a rule by comm alone is valid but warned about:
// check prints the warning with its line and still passes.
func TestPolicyCheckWarnings(t *testing.T) {
	f := filepath.Join(t.TempDir(), "k8s.yaml")
	os.WriteFile(f, []byte(`version: 1
rules:
  - name: prod-only
    workloads:
      namespaces: [prod]
      labels: {app: api}
      containers: [api]
      images: ["registry.example.com/team/*"]
    action: allow
  - name: by-comm
    workloads: {comm: [python3]}
    action: allow
`), 0o644)
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"policy", "check", f}, &out, &errb)
	wantErr := f + `:11: rules[1].workloads.comm: warning: a process sets its own comm (prctl PR_SET_NAME, or the name of the file it runs), so comm alone does not identify a workload; add exe (e.g. /usr/bin/python3*), cgroups or containerIDs to this rule's workloads
`
	if code != 0 || out.String() != f+": ok\n" || errb.String() != wantErr {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit 0, stdout %s: ok, stderr:\n%s", code, out.String(), errb.String(), f, wantErr)
	}
}

// TestPolicySuggestTestDiff runs the three commands on the advise
// package's recorded log: a suggestion replays without new denials and
// is the same bytes twice; a narrower policy fails the test with exit 1;
// diff exits 1 and names what changed.
func TestPolicySuggestTestDiff(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join("..", "..", "advise", "testdata", "audit.jsonl")
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := dispatch(context.Background(), append([]string{"policy"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, sug, stderr := run("suggest", "--paths", log)
	if code != 0 {
		t.Fatalf("suggest: exit %d: %s", code, stderr)
	}
	if _, again, _ := run("suggest", "--paths", log); again != sug {
		t.Fatal("suggest: two runs differ")
	}
	sugFile := filepath.Join(dir, "suggested.yaml")
	os.WriteFile(sugFile, []byte(sug), 0o644)
	narrow := filepath.Join(dir, "narrow.yaml")
	os.WriteFile(narrow, []byte("version: 1\ndefaults: {action: deny}\nrules: [{name: gh, action: allow, destinations: {hosts: [api.github.com]}}]\n"), 0o644)

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"suggested policy checks", []string{"check", sugFile}, 0, ": ok"},
		{"suggested policy replays clean", []string{"test", sugFile, log}, 0, "newly denied: 0"},
		{"narrow policy denies", []string{"test", narrow, log}, 1, "payments/checkout-5d9f -> api.stripe.com:443: 4 deny by rule default"},
		{"diff names the added host", []string{"diff", narrow, sugFile}, 1, "-> api.stripe.com:443\n    GET /v1/charges: allow by rule w1.api.stripe.com, was deny by rule default"},
		{"diff of a policy with itself", []string{"diff", narrow, narrow}, 0, "no difference"},
		{"bad --by", []string{"suggest", "--by", "pod", log}, 2, ""},
		{"test without logs", []string{"test", narrow}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errb := run(tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d (want %d), stdout lacks %q:\n%s\nstderr:\n%s", code, tt.code, tt.want, out, errb)
			}
		})
	}
}
