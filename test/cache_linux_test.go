package test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// cacheAPI is an upstream whose paths exercise the response cache, and
// counts what reached it.
type cacheAPI struct {
	cached, revalidated, notModified, noStore, private, public atomic.Int64
}

func (c *cacheAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/cached", func(w http.ResponseWriter, r *http.Request) {
		n := c.cached.Add(1)
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"upstream call":%d}`+"\n", n)
	})
	mux.HandleFunc("/revalidate", func(w http.ResponseWriter, r *http.Request) {
		c.revalidated.Add(1)
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("ETag", `"r1"`)
		if r.Header.Get("If-None-Match") == `"r1"` {
			c.notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprintln(w, "revalidated body")
	})
	mux.HandleFunc("/nostore", func(w http.ResponseWriter, r *http.Request) {
		n := c.noStore.Add(1)
		w.Header().Set("Cache-Control", "no-store, max-age=300")
		fmt.Fprintf(w, "no-store call %d\n", n)
	})
	mux.HandleFunc("/private", func(w http.ResponseWriter, r *http.Request) {
		n := c.private.Add(1)
		w.Header().Set("Cache-Control", "private, max-age=300")
		fmt.Fprintf(w, "private for %s, call %d\n", r.Header.Get("X-Who"), n)
	})
	mux.HandleFunc("/public", func(w http.ResponseWriter, r *http.Request) {
		n := c.public.Add(1)
		w.Header().Set("Cache-Control", "public, max-age=300")
		fmt.Fprintf(w, "public, call %d\n", n)
	})
	return mux
}

// curlStatus is a curl argv that prints X-Cache-Status and the body.
func curlStatus(curl string, extra ...string) string {
	return curl + " -sS -w 'status=%{http_code} cache=%header{x-cache-status}\\n' " + strings.Join(extra, " ")
}

// Under `sluice run`, a rule's cache answers the second curl of a
// cacheable response itself (the upstream is asked once), revalidates a
// no-cache response with the ETag it stored (the upstream answers 304),
// and never stores a no-store one. The records say what the cache did.
func TestRunResponseCache(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireE2E(t)
	api := &cacheAPI{}
	tp := NewTopology(t, 1)
	host := tp.Hosts[0]
	up := StartUpstream(t, &host.NS, []netip.AddrPort{netip.AddrPortFrom(host.IP4, 443)}, api.handler(), "api.test")
	dir := t.TempDir()
	e := &runEnv{api: host, up: up, caDir: filepath.Join(dir, "ca"),
		config: filepath.Join(dir, "config.yaml"), policy: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl")}
	if err := os.WriteFile(e.config, []byte(fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", e.caDir, up.CAFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := e2ePolicy + `  - name: api-cache
    destinations: {hosts: [api.test]}
    action: allow
    cache: {ttl: 1m}
`
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	resolve := "--resolve api.test:443:" + host.IP4.String()
	c := curlStatus(curl, resolve)
	script := strings.Join([]string{
		c + " https://api.test/cached", c + " https://api.test/cached",
		c + " https://api.test/revalidate", c + " https://api.test/revalidate",
		c + " https://api.test/nostore", c + " https://api.test/nostore",
	}, "; ")
	code, out, errOut := e.run(t, "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	want := []string{
		`{"upstream call":1}`, "status=200 cache=Miss",
		`{"upstream call":1}`, "status=200 cache=Hit",
		"revalidated body", "status=200 cache=Miss",
		"revalidated body", "status=200 cache=Revalidated",
		"no-store call 1", "status=200 cache=Miss",
		"no-store call 2", "status=200 cache=Miss",
	}
	if got := strings.Fields(strings.ReplaceAll(out, "status=", "\nstatus=")); strings.Join(strings.Fields(strings.Join(want, "\n")), " ") != strings.Join(got, " ") {
		t.Fatalf("curl saw:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if n := api.cached.Load(); n != 1 {
		t.Errorf("/cached reached the upstream %d times, want once", n)
	}
	if n := api.notModified.Load(); n != 1 {
		t.Errorf("/revalidate answered 304 %d times, want once (the second request revalidated)", n)
	}
	if n := api.noStore.Load(); n != 2 {
		t.Errorf("/nostore reached the upstream %d times, want twice", n)
	}
	var caches []string
	for _, r := range e.records(t) {
		if r["kind"] == "http" {
			caches = append(caches, fmt.Sprintf("%v %v %v", r["path"], r["cache"], r["rule"]))
		}
	}
	wantRecs := "/cached miss api-cache|/cached hit api-cache|/revalidate miss api-cache|/revalidate revalidated api-cache|/nostore miss api-cache|/nostore miss api-cache"
	if strings.Join(caches, "|") != wantRecs {
		t.Errorf("records: %s\nwant: %s", strings.Join(caches, "|"), wantRecs)
	}
}

// Through `sluice proxy`, a private response is kept per client (two
// client addresses are two workloads): the second client gets its own
// from the upstream, the first its stored one. A shared rule serves a
// public response to both. The proxy's listener answers /healthz and
// /readyz.
func TestProxyCacheNotSharedBetweenWorkloads(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireE2E(t)
	api := &cacheAPI{}
	tp := NewTopology(t, 1)
	host := tp.Hosts[0]
	up := StartUpstream(t, &host.NS, []netip.AddrPort{netip.AddrPortFrom(host.IP4, 443)}, api.handler(), "api.test")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	cfg, pol := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", caDir, up.CAFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	ip := host.IP4.String()
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
ssrf:
  allowCIDRs: ["198.18.0.0/15"]
rules:
  - name: shared-public
    destinations: {hosts: [%q], paths: [/public]}
    action: allow
    cache: {shared: true}
  - name: per-workload
    destinations: {hosts: [%q]}
    action: allow
    cache: {}
`, ip, ip)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, logs := startProxy(t, "--config", cfg, "--policy", pol, "--audit-log", filepath.Join(dir, "audit.jsonl"))
	// The proxy's own listener answers its probes.
	for _, probe := range []string{"healthz", "readyz"} {
		out, err := exec.Command(curl, "-sS", "-f", "http://"+addr+"/"+probe).CombinedOutput()
		if want := map[string]string{"healthz": "ok\n", "readyz": "ready\n"}[probe]; err != nil || string(out) != want {
			t.Fatalf("GET /%s on the proxy listener: %v %q, want %q", probe, err, out, want)
		}
	}

	get := func(src, path string) string {
		t.Helper()
		out, err := exec.Command(curl, "-sS", "--interface", src, "--proxy", "http://"+addr, "--cacert", filepath.Join(caDir, "ca.crt"),
			"-H", "X-Who: "+src, "-w", "cache=%header{x-cache-status}", "https://"+ip+path).CombinedOutput()
		if err != nil {
			t.Fatalf("curl from %s: %v: %s\nproxy: %s", src, err, out, logs.String())
		}
		return strings.ReplaceAll(string(out), "\n", " ")
	}
	steps := []struct{ src, path, want string }{
		{"127.0.0.1", "/private", "private for 127.0.0.1, call 1 cache=Miss"},
		{"127.0.0.2", "/private", "private for 127.0.0.2, call 2 cache=Miss"},
		{"127.0.0.1", "/private", "private for 127.0.0.1, call 1 cache=Hit"},
		{"127.0.0.2", "/private", "private for 127.0.0.2, call 2 cache=Hit"},
		{"127.0.0.1", "/public", "public, call 1 cache=Miss"},
		{"127.0.0.2", "/public", "public, call 1 cache=Hit"},
	}
	for _, s := range steps {
		if got := get(s.src, s.path); got != s.want {
			t.Fatalf("%s %s: got %q, want %q", s.src, s.path, got, s.want)
		}
	}
}
