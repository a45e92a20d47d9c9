package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// From observed traffic to an enforced policy: curl's requests under
// sluice run (audit everything) become a suggested policy; enforced, it
// lets the same requests through unchanged (and replaying the log against
// it changes nothing), and denies a host the log never saw.
func TestRunSuggestedPolicyEnforced(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	if err := os.WriteFile(e.policy, []byte("version: 1\nmode: audit\nssrf:\n  allowCIDRs: [\"198.18.0.0/15\", \"2001:2::/48\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resolve := []string{"--resolve", "api.test:443:" + e.api.IP4.String(), "--resolve", "other.test:443:" + e.api.IP4.String()}
	get := func(url string, extra ...string) (int, string) {
		t.Helper()
		code, out, _ := e.run(t, append(append([]string{curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}"}, resolve...), append(extra, url)...)...)
		return code, out
	}
	for _, p := range []string{"/v1/users/1234", "/v1/users/5678", "/v1/tools"} {
		if code, status := get("https://api.test" + p); code != 0 || status != "200" {
			t.Fatalf("observe %s: exit %d status %s", p, code, status)
		}
	}
	// HTTP/1.1: the test API answers without reading the body, and over
	// HTTP/2 curl then sometimes reports the stream's reset (exit 92).
	if code, status := get("https://api.test/v1/items", "--http1.1", "-X", "POST", "-d", "{}"); code != 0 || status != "200" {
		t.Fatalf("observe POST: exit %d status %s", code, status)
	}

	dir := t.TempDir()
	suggested := filepath.Join(dir, "suggested.yaml")
	out, err := exec.Command(sluiceBin, "policy", "suggest", "--by", "exe", "--paths", e.audit).Output()
	if err != nil {
		t.Fatalf("policy suggest: %v", err)
	}
	again, _ := exec.Command(sluiceBin, "policy", "suggest", "--by", "exe", "--paths", e.audit).Output()
	if !bytes.Equal(out, again) {
		t.Errorf("two suggestions from one log differ")
	}
	if !strings.Contains(string(out), "/v1/users/*") || !strings.Contains(string(out), "api.test") {
		t.Errorf("suggestion does not template the user ids or name the host:\n%s", out)
	}
	if err := os.WriteFile(suggested, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(sluiceBin, "policy", "check", suggested).CombinedOutput(); err != nil {
		t.Fatalf("policy check of the suggestion: %v\n%s\n%s", err, b, out)
	}
	if b, err := exec.Command(sluiceBin, "policy", "test", suggested, e.audit).CombinedOutput(); err != nil {
		t.Fatalf("replaying the log against the suggestion changes something: %v\n%s", err, b)
	}

	// Enforced: the same traffic passes, a new host and a new method don't.
	if err := os.Rename(suggested, e.policy); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/v1/users/9012", "/v1/tools"} {
		if code, status := get("https://api.test" + p); code != 0 || status != "200" {
			t.Errorf("enforced, %s: exit %d status %s, want 200", p, code, status)
		}
	}
	// A host denied before any HTTP is known closes the TLS connection
	// (curl: exit 35), with a record.
	if code, status := get("https://other.test/v1/tools"); code != 35 {
		t.Errorf("enforced, a host never seen: exit %d status %s, want the TLS connection refused", code, status)
	}
	denied := false
	for _, r := range e.records(t) {
		if r["kind"] == "l4" && r["sni"] == "other.test" && r["decision"] == "deny" {
			denied = true
		}
	}
	if !denied {
		t.Errorf("no deny record for other.test")
	}
	if code, status := get("https://api.test/v1/tools", "-X", "DELETE"); code != 0 || status != "403" {
		t.Errorf("enforced, a method never seen: exit %d status %s, want 403", code, status)
	}
}
