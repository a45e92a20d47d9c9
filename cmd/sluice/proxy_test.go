package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is an io.Writer safe for the proxy's goroutines.
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

// `sluice proxy` serves plain HTTP through its explicit listener with the
// embedded default policy: a loopback upstream is allowed but recorded as
// would_deny by the SSRF guard (audit mode), and the command exits 0 when
// its context ends.
func TestProxyCommand(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream saw %s", r.URL.Path)
	}))
	defer up.Close()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.jsonl")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- dispatch(ctx, []string{"proxy", "--listen", addr, "--ca-dir", filepath.Join(dir, "ca"), "--audit-log", auditLog}, &stdout, &stderr)
	}()

	proxyURL, _ := url.Parse("http://" + addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	var resp *http.Response
	for i := 0; i < 100; i++ {
		if resp, err = client.Get(up.URL + "/hello"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET through sluice proxy: %v\nstderr: %s", err, stderr.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "upstream saw /hello" {
		t.Fatalf("body = %q", body)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d, stderr: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sluice proxy did not stop when its context ended")
	}
	if !strings.Contains(stderr.String(), "listening on "+addr) {
		t.Errorf("stderr does not say where it listens: %s", stderr.String())
	}
	f, err := os.Open(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rec map[string]any
	for s := bufio.NewScanner(f); s.Scan(); {
		var m map[string]any
		if json.Unmarshal(s.Bytes(), &m) == nil && m["path"] == "/hello" {
			rec = m
		}
	}
	if rec == nil || rec["decision"] != "would_deny" || rec["rule"] != "ssrf" || rec["status"] != float64(200) {
		t.Fatalf("audit record = %v, want status 200, decision would_deny by rule ssrf", rec)
	}
}

// `sluice proxy --metrics ADDR` serves /metrics for Prometheus beside the
// proxy, says where on stderr, and counts what went through the proxy.
func TestProxyMetrics(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}))
	defer up.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- dispatch(ctx, []string{"proxy", "--listen", addr, "--metrics", "127.0.0.1:0", "--ca-dir", filepath.Join(dir, "ca"), "--audit-log", filepath.Join(dir, "audit.jsonl")}, &stdout, &stderr)
	}()
	var metricsURL string
	for i := 0; i < 200 && metricsURL == ""; i++ {
		if _, rest, ok := strings.Cut(stderr.String(), "metrics on "); ok {
			metricsURL, _, _ = strings.Cut(rest, "\n")
		} else {
			time.Sleep(25 * time.Millisecond)
		}
	}
	if metricsURL == "" {
		t.Fatalf("stderr does not say where the metrics are: %s", stderr.String())
	}

	proxyURL, _ := url.Parse("http://" + addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	resp, err := client.Get(up.URL + "/counted")
	if err != nil {
		t.Fatalf("GET through sluice proxy: %v", err)
	}
	resp.Body.Close()

	resp, err = http.Get(metricsURL)
	if err != nil {
		t.Fatalf("GET %s: %v", metricsURL, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", metricsURL, resp.Status)
	}
	if !strings.Contains(string(body), "sluice_proxy_requests_total{") {
		t.Errorf("/metrics has no sluice_proxy_requests_total after a request:\n%s", body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
}

func TestProxyMetricsRefusesEveryAddress(t *testing.T) {
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"proxy", "--metrics", "[::]:9464", "--ca-dir", t.TempDir()}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), `sluice proxy: --metrics: admin.listen "[::]:9464": an unspecified address`) {
		t.Errorf("exit %d, stderr %s; want exit 2 naming the flag and the value", code, errb.String())
	}
}
