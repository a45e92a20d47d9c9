package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// What a request carries, end to end under `sluice run`: content rules
// on real clients' requests (curl, Python, Node), credentials injected and
// placeholders refused, bodies logged redacted.

// Made-up secrets, built in pieces.
var (
	e2eAWSKey   = "AKIA" + "Z7QH4M2KXW3PL5TB"
	e2eMarker   = "REDACTEDREDACTEDREDA" // e2eAWSKey redacted
	e2eFileCred = "file-secret-" + "7Hq2Lm9Xw4"
	e2eEnvCred  = "env-secret-" + "K3v8Pz1Rt6"
)

// contentPolicy has one rule per behaviour, told apart by path.
const contentPolicy = `version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15", "2001:2::/48"]
defaults:
  action: allow
credentials:
  - {name: api, file: %s, hosts: [api.test]}
  - {name: apienv, env: SLUICE_E2E_API_SECRET, hosts: [api.test]}
rules:
  - name: block-secrets
    destinations: {hosts: [api.test], paths: [/block]}
    action: allow
    content: {match: [{detectors: [all], action: block}]}
  - name: redact-secrets
    destinations: {hosts: [api.test], paths: [/redact]}
    action: allow
    content: {match: [{detectors: [all], action: redact}]}
  - name: log-bodies
    destinations: {hosts: [api.test], paths: [/log]}
    action: allow
    logBodies: {request: 1KB, response: 1KB}
  - name: inject
    destinations: {hosts: [api.test], paths: [/inject]}
    action: allow
    headers:
      request:
        set: {Authorization: "Bearer ${cred:api}", X-Env-Key: "${cred:apienv}"}
        remove: [X-Debug]
      response:
        set: {X-Injected: "yes"}
`

// seenRequest is what the upstream received.
type seenRequest struct {
	Header http.Header
	Body   []byte
	Err    error // the body did not arrive whole (Sluice refused the rest)
	// First and Last: when the body's first bytes and its end arrived.
	First, Last time.Time
}

// contentEnv is a runEnv whose upstream records every request by path
// and answers with how many bytes it got (never echoing what it got).
type contentEnv struct {
	*runEnv
	hosts string // a hosts file naming api.test and other.test
	mu    sync.Mutex
	seen  map[string]seenRequest
}

func newContentEnv(t *testing.T) *contentEnv {
	t.Helper()
	RequireE2E(t)
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	e := &contentEnv{seen: map[string]seenRequest{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var b []byte
		var first time.Time
		buf := make([]byte, 32<<10)
		var err error
		for {
			n, rerr := r.Body.Read(buf)
			if n > 0 && first.IsZero() {
				first = time.Now()
			}
			b = append(b, buf[:n]...)
			if rerr != nil {
				if rerr != io.EOF {
					err = rerr
				}
				break
			}
		}
		e.mu.Lock()
		e.seen[r.URL.Path] = seenRequest{Header: r.Header.Clone(), Body: b, Err: err, First: first, Last: time.Now()}
		e.mu.Unlock()
		fmt.Fprintf(w, "got %d bytes\n", len(b))
	})
	up := StartUpstream(t, &api.NS, []netip.AddrPort{netip.AddrPortFrom(api.IP4, 443)}, mux, "api.test", "other.test")
	dir := t.TempDir()
	e.runEnv = &runEnv{api: api, up: up, caDir: filepath.Join(dir, "ca"),
		config: filepath.Join(dir, "config.yaml"), policy: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl")}
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", e.caDir, up.CAFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.hosts = filepath.Join(dir, "hosts")
	hosts := fmt.Sprintf("127.0.0.1 localhost\n%s api.test other.test\n", api.IP4)
	if err := os.WriteFile(e.hosts, []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	credFile := filepath.Join(dir, "api-key")
	if err := os.WriteFile(credFile, []byte(e2eFileCred+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.policy, fmt.Appendf(nil, contentPolicy, credFile), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// got is what the upstream received on path; ok is false when nothing
// reached it.
func (e *contentEnv) got(path string) (seenRequest, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.seen[path]
	return s, ok
}

// runWithEnv runs `sluice run -- argv` with extra variables in sluice's
// own environment, in a private mount namespace whose /etc/hosts names
// api.test and other.test (so that Python and Node resolve them).
func (e *contentEnv) runWithEnv(t *testing.T, env []string, argv ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	script := `mount --bind "$0" /etc/hosts && exec "$@"`
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, e.hosts,
		sluiceBin, "run", "--config", e.config, "--policy", e.policy, "--audit-log", e.audit, "--no-summary", "--"}, argv...)
	cmd := exec.CommandContext(ctx, RequireTool(t, "unshare"), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sluice run: %v\nstderr:\n%s", err, stderr.String())
	}
	return code, stdout.String(), stderr.String()
}

func (e *contentEnv) resolve() []string {
	return []string{"--resolve", "api.test:443:" + e.api.IP4.String(), "--resolve", "other.test:443:" + e.api.IP4.String()}
}

func detectorsOf(rec map[string]any) []string {
	var out []string
	ds, _ := rec["detectors"].([]any)
	for _, d := range ds {
		out = append(out, fmt.Sprint(d))
	}
	return out
}

// curl POSTs an AWS access key id in a JSON body to a block rule: the
// client gets 400 naming the rule and the detector (not the key), the
// upstream gets nothing, and the record lists the detector.
func TestRunContentBlocksAWSKey(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newContentEnv(t)
	args := append([]string{curl, "-sS"}, e.resolve()...)
	args = append(args, "-H", "Content-Type: application/json", "--data", `{"note":"deploy","key":"`+e2eAWSKey+`"}`, "https://api.test/block/upload")
	code, out, errOut := e.run(t, args...)
	if code != 0 {
		t.Fatalf("curl exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var body map[string]string
	if err := json.Unmarshal([]byte(out), &body); err != nil || body["rule"] != "block-secrets" || body["detector"] != "aws-access-key-id" || body["in"] != "body" {
		t.Fatalf("answer %q (%v), want JSON naming rule block-secrets and detector aws-access-key-id in the body", out, err)
	}
	if strings.Contains(out, e2eAWSKey) {
		t.Fatalf("the answer echoes the key: %s", out)
	}
	// The request head may have gone out before the body was scanned:
	// the body never arrives whole, and the key never arrives at all.
	if s, ok := e.got("/block/upload"); ok && (s.Err == nil || bytes.Contains(s.Body, []byte(e2eAWSKey))) {
		t.Fatalf("the upstream received the body: %q, %v", s.Body, s.Err)
	}
	rec := httpRecord(e.records(t), "/block/upload")
	if rec == nil || rec["decision"] != "deny" || rec["status"] != float64(400) || rec["rule"] != "block-secrets" ||
		!slices.Equal(detectorsOf(rec), []string{"aws-access-key-id"}) {
		t.Fatalf("record %v, want a 400 deny by block-secrets with detectors [aws-access-key-id]", rec)
	}
	raw, _ := os.ReadFile(e.audit)
	if bytes.Contains(raw, []byte(e2eAWSKey)) {
		t.Fatal("the audit log holds the key")
	}
}

// Python's http.client sends a body with Content-Length to a redact
// rule: the upstream receives the marker in the key's place, with the
// same length, and the client's request succeeds.
func TestRunContentRedactsPython(t *testing.T) {
	py := RequireTool(t, "python3")
	e := newContentEnv(t)
	body := `{"creds":{"aws":"` + e2eAWSKey + `"},"n":1}`
	script := fmt.Sprintf(`
import http.client, ssl
c = http.client.HTTPSConnection("api.test", 443, context=ssl.create_default_context())
c.request("POST", "/redact/py", body=%q, headers={"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode().strip())
`, body)
	code, out, errOut := e.runWithEnv(t, nil, py, "-c", script)
	if code != 0 {
		t.Fatalf("python exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	checkRedacted(t, e, "/redact/py", body, out)
}

func checkRedacted(t *testing.T, e *contentEnv, path, body, out string) {
	t.Helper()
	want := strings.Replace(body, e2eAWSKey, e2eMarker, 1)
	got, ok := e.got(path)
	if !ok || string(got.Body) != want {
		t.Fatalf("upstream got %q (reached: %v), want %q\nclient said: %s", got.Body, ok, want, out)
	}
	if !strings.Contains(out, fmt.Sprintf("got %d bytes", len(body))) {
		t.Fatalf("client said %q, want the upstream's 200 for %d bytes", out, len(body))
	}
	rec := httpRecord(e.records(t), path)
	if rec == nil || rec["decision"] != "allow" || !slices.Equal(detectorsOf(rec), []string{"aws-access-key-id"}) {
		t.Fatalf("record %v, want allow with detectors [aws-access-key-id]", rec)
	}
}

// Node sends a chunked body in two writes 200ms apart, the key cut in
// the middle: the scanner holds back the first half, finds the whole key
// and the upstream receives the marker.
func TestRunContentSplitAcrossChunksNode(t *testing.T) {
	node := RequireTool(t, "node")
	e := newContentEnv(t)
	half := len(e2eAWSKey) / 2
	script := fmt.Sprintf(`
const https = require("https");
const req = https.request({host: "api.test", path: "/redact/node", method: "POST", headers: {"Content-Type": "text/plain"}}, res => {
  let b = ""; res.on("data", d => b += d); res.on("end", () => console.log(res.statusCode, b.trim()));
});
req.on("error", e => { console.error(e); process.exit(1); });
req.write(%q);
setTimeout(() => { req.write(%q); req.end(); }, 200);
`, "first part "+e2eAWSKey[:half], e2eAWSKey[half:]+" second part")
	code, out, errOut := e.runWithEnv(t, nil, node, "-e", script)
	if code != 0 {
		t.Fatalf("node exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	got, ok := e.got("/redact/node")
	if got.Header.Get("Content-Length") != "" {
		t.Errorf("upstream got Content-Length %q for a chunked body", got.Header.Get("Content-Length"))
	}
	checkRedacted(t, e, "/redact/node", "first part "+e2eAWSKey+" second part", out)
	_ = ok
}

// Python sends a gzip body to a block rule: it is inspected decompressed
// and refused.
func TestRunContentGzipBodyInspected(t *testing.T) {
	py := RequireTool(t, "python3")
	e := newContentEnv(t)
	script := fmt.Sprintf(`
import http.client, gzip
body = gzip.compress(b'{"key": "%s"}')
c = http.client.HTTPSConnection("api.test", 443)
c.request("POST", "/block/gz", body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode().strip())
`, e2eAWSKey)
	code, out, errOut := e.runWithEnv(t, nil, py, "-c", script)
	if code != 0 {
		t.Fatalf("python exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.HasPrefix(out, "400 ") || !strings.Contains(out, `"detector":"aws-access-key-id"`) {
		t.Fatalf("python got %q, want 400 naming aws-access-key-id", out)
	}
	if s, ok := e.got("/block/gz"); ok && (s.Err == nil || bytes.Contains(s.Body, []byte(e2eAWSKey))) {
		t.Fatalf("the upstream received the body: %q, %v", s.Body, s.Err)
	}
	rec := httpRecord(e.records(t), "/block/gz")
	if rec == nil || rec["decision"] != "deny" || !slices.Equal(detectorsOf(rec), []string{"aws-access-key-id"}) {
		t.Fatalf("record %v", rec)
	}
}

// A rule injects two credentials, one from a file and one from sluice's
// environment: the upstream sees both secrets; the command's environment,
// its output, the audit log and sluice's log never hold them; the record
// names the credentials.
func TestRunCredentialInjected(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newContentEnv(t)
	code, out, errOut := e.runWithEnv(t, []string{"SLUICE_E2E_API_SECRET=" + e2eEnvCred},
		"sh", "-c", `env; exec "$0" -sS -i -H "Authorization: Bearer mine" -H "X-Debug: 1" https://api.test/inject/x`, curl)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	got, ok := e.got("/inject/x")
	if !ok || got.Header.Get("Authorization") != "Bearer "+e2eFileCred || got.Header.Get("X-Env-Key") != e2eEnvCred || got.Header.Get("X-Debug") != "" {
		t.Fatalf("upstream got %v (reached %v), want the injected credentials and no X-Debug", got.Header, ok)
	}
	if !strings.Contains(strings.ToLower(out), "x-injected: yes") {
		t.Errorf("response lacks the X-Injected header the rule sets:\n%s", out)
	}
	raw, _ := os.ReadFile(e.audit)
	for _, s := range []string{e2eFileCred, e2eEnvCred} {
		for what, text := range map[string]string{"the command's environment and output": out, "sluice's log": errOut, "the audit log": string(raw)} {
			if strings.Contains(text, s) {
				t.Errorf("%s holds a secret", what)
			}
		}
	}
	rec := httpRecord(e.records(t), "/inject/x")
	if creds, _ := rec["credentials"].([]any); rec == nil || len(creds) != 2 {
		t.Fatalf("record %v, want credentials [api apienv]", rec)
	}
}

// The workload holds the placeholder sluice:cred:api: to api.test it
// becomes the secret, to other.test (same server, another name) it is
// refused 403 and recorded as an exfiltration attempt.
func TestRunPlaceholderBoundHostOnly(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newContentEnv(t)
	code, out, errOut := e.runWithEnv(t, nil, "sh", "-c",
		`"$0" -sS -H "X-Api-Key: sluice:cred:api" https://api.test/ok; echo; "$0" -sS -u "bot:sluice:cred:api" https://other.test/exfil`, curl)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got, ok := e.got("/ok"); !ok || got.Header.Get("X-Api-Key") != e2eFileCred {
		t.Fatalf("api.test got X-Api-Key %q (reached %v), want the secret", got.Header.Get("X-Api-Key"), ok)
	}
	if _, ok := e.got("/exfil"); ok {
		t.Fatal("other.test received the request with the placeholder")
	}
	if strings.Contains(out, e2eFileCred) || !strings.Contains(out, `"reason":"placeholder of credential api sent to other.test"`) {
		t.Fatalf("client output %q, want the 403 reason and no secret", out)
	}
	rec := httpRecord(e.records(t), "/exfil")
	if rec == nil || rec["decision"] != "deny" || rec["status"] != float64(403) || rec["reason"] != "credential placeholder sent to a host it is not bound to" {
		t.Fatalf("record %v, want the exfiltration deny", rec)
	}
}

// A rule with logBodies records both bodies, the AWS key of the request
// body redacted in the record while the upstream (no content rule here)
// receives the body as sent.
func TestRunBodyLoggingRedacted(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newContentEnv(t)
	body := `{"task":"upload","key":"` + e2eAWSKey + `"}`
	code, out, errOut := e.runWithEnv(t, nil, curl, "-sS", "--data", body, "https://api.test/log/x")
	if code != 0 {
		t.Fatalf("curl exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got, ok := e.got("/log/x"); !ok || string(got.Body) != body {
		t.Fatalf("upstream got %q, want the body as sent", got.Body)
	}
	rec := httpRecord(e.records(t), "/log/x")
	want := strings.Replace(body, e2eAWSKey, e2eMarker, 1)
	if rec == nil || rec["request_body"] != want || rec["response_body"] != fmt.Sprintf("got %d bytes\n", len(body)) {
		t.Fatalf("record %v, want request_body %q and the response body", rec, want)
	}
	raw, _ := os.ReadFile(e.audit)
	if bytes.Contains(raw, []byte(e2eAWSKey)) {
		t.Fatal("the audit log holds the key")
	}
}

// A capture rule without captureSecrets: the pcapng file, dissected by
// tshark, shows the request with its Authorization value and the AWS key
// of its body redacted; the upstream got both as sent.
func TestRunCaptureRedacted(t *testing.T) {
	curl := RequireTool(t, "curl")
	tshark := RequireTool(t, "tshark")
	e := newContentEnv(t)
	pcapFile := filepath.Join(t.TempDir(), "decrypted.pcapng")
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\naudit:\n  capture:\n    file: %s\n", e.caDir, e.up.CAFile, pcapFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, _ := os.ReadFile(e.policy)
	pol = append(pol, "  - name: watch\n    destinations: {hosts: [api.test], paths: [/watch]}\n    action: allow\n    capture: true\n"...)
	if err := os.WriteFile(e.policy, pol, 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "my-own-token-4711"
	code, out, errOut := e.runWithEnv(t, nil, curl, "-sS", "--http1.1", "-H", "Authorization: Bearer "+token,
		"--data", `{"key":"`+e2eAWSKey+`"}`, "https://api.test/watch/x")
	if code != 0 {
		t.Fatalf("curl exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got, ok := e.got("/watch/x"); !ok || got.Header.Get("Authorization") != "Bearer "+token || !bytes.Contains(got.Body, []byte(e2eAWSKey)) {
		t.Fatalf("upstream got %v %q, want the request as sent", got.Header, got.Body)
	}
	dump, err := exec.Command(tshark, "-r", pcapFile, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri", "-e", "http.authorization", "-e", "http.file_data").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, dump)
	}
	if !strings.Contains(string(dump), "/watch/x") {
		t.Fatalf("tshark does not show the request:\n%s", dump)
	}
	raw, _ := os.ReadFile(pcapFile)
	for _, s := range []string{token, e2eAWSKey} {
		if bytes.Contains(raw, []byte(s)) || strings.Contains(string(dump), s) {
			t.Errorf("the capture holds %q:\n%s", s, dump)
		}
	}
}

// curl over HTTP/2 with a Content-Length body to a redact rule: the key
// is redacted in the DATA frames, the length stays right, and the key in
// a request header is redacted too.
func TestRunContentRedactsCurlHTTP2(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newContentEnv(t)
	body := `{"aws":"` + e2eAWSKey + `"}`
	code, out, errOut := e.runWithEnv(t, nil, curl, "-sS", "--http2", "-w", "\nproto=%{http_version}\n", "-H", "X-Key: "+e2eAWSKey,
		"--data", body, "https://api.test/redact/h2")
	if code != 0 {
		t.Fatalf("curl exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "proto=2") {
		t.Fatalf("curl did not use HTTP/2: %q", out)
	}
	got, _ := e.got("/redact/h2")
	if got.Header.Get("X-Key") != e2eMarker {
		t.Errorf("upstream got X-Key %q, want the marker", got.Header.Get("X-Key"))
	}
	checkRedacted(t, e, "/redact/h2", body, out)
}

// The same capture over HTTP/2: curl sends its headers HPACK-coded, with
// Huffman codes, and a second request on the connection refers to the
// first one's headers through the dynamic table. tshark, decoding the
// capture's header blocks, shows both requests with every credential
// header and the key in a header value as the marker, and the file holds
// none of them in any coding.
func TestRunCaptureRedactedHTTP2(t *testing.T) {
	curl := RequireTool(t, "curl")
	tshark := RequireTool(t, "tshark")
	e := newContentEnv(t)
	pcapFile := filepath.Join(t.TempDir(), "decrypted.pcapng")
	cfg := fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\naudit:\n  capture:\n    file: %s\n", e.caDir, e.up.CAFile, pcapFile)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, _ := os.ReadFile(e.policy)
	pol = append(pol, "  - name: watch\n    destinations: {hosts: [api.test], paths: [/watch]}\n    action: allow\n    capture: true\n"...)
	if err := os.WriteFile(e.policy, pol, 0o600); err != nil {
		t.Fatal(err)
	}
	const token, cookie, apiKey = "my-own-token-4711", "c00k1e-value-0815", "k3y-of-the-workload-42"
	code, out, errOut := e.runWithEnv(t, nil, curl, "-sS", "--http2", "-w", "\nproto=%{http_version}\n",
		"-H", "Authorization: Bearer "+token, "-H", "Cookie: session="+cookie, "-H", "X-Api-Key: "+apiKey, "-H", "X-Note: id "+e2eAWSKey,
		"https://api.test/watch/one", "https://api.test/watch/two")
	if code != 0 || strings.Count(out, "proto=2") != 2 {
		t.Fatalf("curl exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got, ok := e.got("/watch/two"); !ok || got.Header.Get("Authorization") != "Bearer "+token || got.Header.Get("X-Api-Key") != apiKey {
		t.Fatalf("upstream got %v, want the request as sent", got.Header)
	}
	dump, err := exec.Command(tshark, "-r", pcapFile, "-d", "tcp.port==80,http2", "-Y", "http2.type == 1",
		"-T", "fields", "-E", "separator=|", "-e", "http2.header.name", "-e", "http2.header.value").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, dump)
	}
	text := string(dump)
	for _, s := range []string{"/watch/one", "/watch/two", "authorization", "x-api-key", "curl/", ",REDACTEDREDACTEDREDACTED,", "id REDACTEDREDACTEDREDA"} {
		if !strings.Contains(text, s) {
			t.Errorf("tshark does not show %q in the header blocks:\n%s", s, text)
		}
	}
	raw, _ := os.ReadFile(pcapFile)
	for _, s := range []string{token, cookie, apiKey, e2eAWSKey} {
		if bytes.Contains(raw, []byte(s)) || strings.Contains(text, s) {
			t.Errorf("the capture holds %q:\n%s", s, text)
		}
	}
}

// Python streams a chunked upload to a redact rule in three pieces a
// second apart, the key split between the last two: the upstream gets
// the body's first bytes when the first piece is sent (the scanner
// releases what is safe when the client pauses, without waiting for
// 8KiB), and the key redacted whole.
func TestRunContentSlowStreamPython(t *testing.T) {
	py := RequireTool(t, "python3")
	e := newContentEnv(t)
	pieces := []string{`{"stream":true,"messages":[{"role":"user","content":"first"},`, `{"role":"user","content":"key ` + e2eAWSKey[:9], e2eAWSKey[9:] + `"}]}`}
	script := fmt.Sprintf(`
import http.client, ssl, time
def body():
    for i, p in enumerate([%q, %q, %q]):
        if i:
            time.sleep(1)
        yield p.encode()
c = http.client.HTTPSConnection("api.test", 443, context=ssl.create_default_context())
c.request("POST", "/redact/slow", body=body(), encode_chunked=True, headers={"Content-Type": "application/octet-stream"})
r = c.getresponse()
print(r.status, r.read().decode().strip())
`, pieces[0], pieces[1], pieces[2])
	code, out, errOut := e.runWithEnv(t, nil, py, "-c", script)
	if code != 0 {
		t.Fatalf("python exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	checkRedacted(t, e, "/redact/slow", strings.Join(pieces, ""), out)
	got, _ := e.got("/redact/slow")
	if d := got.Last.Sub(got.First); d < 1500*time.Millisecond {
		t.Fatalf("the upstream got the first bytes %v before the body's end, want the first piece about 2s before", d)
	}
}
