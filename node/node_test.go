package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/kubeapi"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A node without interception is the explicit proxy: it creates the CA,
// records each request in the JSON audit log (on Stdout for "stdout"),
// the access log, the metrics and the flows table, and Close may be
// called twice.
func TestStartProxyOnly(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.AccessLog = filepath.Join(dir, "access.log")
	var out lockedBuffer
	n := proxyOneRequest(t, cfg, Options{Stdout: &out}, up.URL+"/through")
	if err := n.SelectCgroup("/x"); err == nil {
		t.Error("SelectCgroup on a node without interception: no error")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !strings.Contains(out.String(), `"path":"/through"`) {
		t.Errorf("audit log on Stdout lacks the request: %s", out.String())
	}
	if b, _ := os.ReadFile(cfg.Audit.AccessLog); !strings.Contains(string(b), "/through") {
		t.Errorf("access log lacks the request: %q", b)
	}
	if _, err := os.Stat(filepath.Join(cfg.CA.Dir, "ca.crt")); err != nil {
		t.Errorf("CA not created: %v", err)
	}
	if rows := n.Flows.Snapshot(); len(rows.Rows) == 0 {
		t.Errorf("flows table empty after Close: %+v", rows)
	}
}

// A config the node cannot start with fails Start with the reason, and
// leaves nothing open.
func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		mod  func(*config.Config)
		want string
	}{
		{"missing policy file", func(c *config.Config) { c.PolicyFile = filepath.Join(dir, "nope.yaml") }, "nope.yaml"},
		{"audit file in a missing directory", func(c *config.Config) { c.Audit.File = filepath.Join(dir, "no", "audit.jsonl") }, "open audit log"},
		{"admin on the intercept address", func(c *config.Config) { c.Admin.Listen = "169.254.77.77:9090" }, "169.254.77.77"},
		{"ca.secret outside a pod", func(c *config.Config) { c.CA.Secret = "sluice-system/sluice-ca" }, "ca.secret sluice-system/sluice-ca: not in a Kubernetes pod"},
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // as on a host, also when the tests run in a pod
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.CA.Dir = filepath.Join(dir, "ca")
			tt.mod(&cfg)
			_, err := Start(context.Background(), cfg, Options{Admin: true})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one naming %q", err, tt.want)
			}
		})
	}
}

// With audit.flushInterval the audit and access logs hold their lines
// (here for an hour) and Close writes them: nothing is lost at exit.
func TestStartFlushIntervalWritesHeldLinesAtClose(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	cfg.Audit.AccessLog = filepath.Join(dir, "access.log")
	cfg.Audit.FlushInterval = config.Duration(time.Hour)
	n := proxyOneRequest(t, cfg, Options{Stdout: io.Discard}, up.URL+"/held")
	for _, p := range []string{cfg.Audit.File, cfg.Audit.AccessLog} {
		if b, _ := os.ReadFile(p); strings.Contains(string(b), "/held") {
			t.Errorf("%s has the record before the interval or Close: %q", filepath.Base(p), b)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cfg.Audit.File, cfg.Audit.AccessLog} {
		if b, _ := os.ReadFile(p); !strings.Contains(string(b), "/held") {
			t.Errorf("%s lacks the record after Close: %q", filepath.Base(p), b)
		}
	}
}

// proxyOneRequest starts a node with cfg as the explicit proxy, sends one
// GET for target through it, and stops serving; the node is left open.
func proxyOneRequest(t *testing.T, cfg config.Config, opts Options, target string) *Node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- n.ServeExplicit(ctx, ln) }()
	pu, _ := url.Parse("http://" + ln.Addr().String())
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	resp, err := c.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	<-served
	return n
}

// process.gcHeadroom raises the GOGC that /metrics reports while the node
// runs (the heap is small here), and Close puts Go's default back;
// "off" leaves it alone.
func TestStartGCHeadroom(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100)) // whatever GOGC the environment set
	gogc := func(n *Node) string {
		t.Helper()
		resp, err := http.Get("http://" + n.AdminAddr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "go_gc_gogc_percent "); ok {
				return v
			}
		}
		t.Fatalf("/metrics has no go_gc_gogc_percent:\n%s", b)
		return ""
	}
	for _, tt := range []struct {
		headroom config.SizeOrOff
		want     func(string) bool
		what     string
	}{
		{64 << 20, func(v string) bool { return v != "100" }, "above 100"},
		{0, func(v string) bool { return v == "100" }, "100"},
	} {
		cfg := config.Default()
		cfg.CA.Dir = filepath.Join(t.TempDir(), "ca")
		cfg.Audit.File = "none"
		cfg.Admin.Listen = "127.0.0.1:0"
		cfg.Process.GCHeadroom = tt.headroom
		n, err := Start(context.Background(), cfg, Options{Admin: true})
		if err != nil {
			t.Fatal(err)
		}
		if v := gogc(n); !tt.want(v) {
			t.Errorf("gcHeadroom %d: go_gc_gogc_percent %s, want %s", tt.headroom, v, tt.what)
		}
		n.Close()
		if v := debug.SetGCPercent(100); v != 100 {
			t.Errorf("gcHeadroom %d: GOGC %d after Close, want 100", tt.headroom, v)
		}
	}
}

// flakyAPI answers 503 to its first failures requests, then as an API
// server with no Secret yet: GET 404, POST 201; or 403 to everything.
type flakyAPI struct {
	mu       sync.Mutex
	failures int
	forbid   bool
	requests int
}

func (f *flakyAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests++
	n := f.requests
	f.mu.Unlock()
	status := func(code int, reason string) {
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":%q,"code":%d}`, reason, code)
	}
	switch {
	case f.forbid:
		status(http.StatusForbidden, "Forbidden")
	case n <= f.failures:
		status(http.StatusServiceUnavailable, "ServiceUnavailable")
	case r.Method == http.MethodGet:
		status(http.StatusNotFound, "NotFound")
	default:
		w.WriteHeader(http.StatusCreated)
		io.Copy(w, r.Body)
	}
}

// A start with ca.secret waits for an API server that is briefly away,
// and gives up at once on one that refuses.
func TestLoadSharedCARetriesOnlyWhatMayPass(t *testing.T) {
	for _, tc := range []struct {
		name         string
		api          *flakyAPI
		wantErr      string
		wantRequests int
	}{
		{"two 503s, then created", &flakyAPI{failures: 2}, "", 4},
		{"forbidden", &flakyAPI{forbid: true}, "403 Forbidden", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(tc.api)
			defer srv.Close()
			api := kubeapi.New(srv.URL, "", srv.Client().Transport.(*http.Transport).TLSClientConfig)
			var logs lockedBuffer
			_, err := loadSharedCA(context.Background(), api, "sluice-system", "sluice-ca", ca.Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if tc.api.requests != tc.wantRequests {
				t.Errorf("%d requests, want %d", tc.api.requests, tc.wantRequests)
			}
			if retries := strings.Count(logs.String(), "ca secret unreachable, retrying"); retries != tc.api.failures {
				t.Errorf("%d retries logged, want %d:\n%s", retries, tc.api.failures, logs.String())
			}
		})
	}
}
