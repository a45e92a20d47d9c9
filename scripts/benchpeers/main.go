// Command benchpeers is the Go half of `make bench-peers`
// (scripts/bench-peers.sh): the HTTPS upstream every proxy under test
// forwards to, a keep-alive load client that can go through an explicit
// CONNECT proxy (wrk and h2load cannot), and the idle-connection memory
// probe. It is a developer tool: it sends traffic only to the addresses
// it is given, which the script keeps local.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchpeers upstream|load|idle FLAGS")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upstream":
		err = upstream(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "idle":
		err = idle(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchpeers:", err)
		os.Exit(1)
	}
}

// upstream serves HTTPS (HTTP/1.1 and h2): / answers a small body,
// /bytes?n=N streams N bytes.
func upstream(args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "address")
	cert := fs.String("cert", "", "PEM certificate")
	key := fs.String("key", "", "PEM key")
	fs.Parse(args)
	kp, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		return fmt.Errorf("load upstream certificate: %w", err)
	}
	body := []byte("hello from the upstream, a small JSON-sized answer of about one hundred bytes.......\n")
	chunk := make([]byte, 64<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	srv := &http.Server{
		Addr:      *listen,
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{kp}, NextProtos: []string{"h2", "http/1.1"}},
	}
	srv.SetKeepAlivesEnabled(true)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	fmt.Println("ready")
	return srv.ServeTLS(ln, "", "")
}

// clientTLS trusts the PEM file ca for server name sni.
func clientTLS(ca, sni string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read CA %s: %w", ca, err)
		}
		pool.AppendCertsFromPEM(pem)
	}
	return &tls.Config{RootCAs: pool, ServerName: sni, NextProtos: []string{"http/1.1"}}, nil
}

// load runs c keep-alive HTTP/1.1 connections for d, each sending GETs
// back to back, and prints "requests N rps R p50_us P p99_us Q".
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	target := fs.String("url", "", "https URL")
	proxy := fs.String("proxy", "", "explicit proxy host:port (CONNECT)")
	ca := fs.String("ca", "", "PEM bundle to trust")
	sni := fs.String("sni", "", "TLS server name")
	conns := fs.Int("c", 32, "connections")
	dur := fs.Duration("d", 5*time.Second, "duration")
	rate := fs.Float64("rate", 0, "requests per second in all, paced evenly over the connections (0: as fast as they go)")
	fs.Parse(args)
	u, err := url.Parse(*target)
	if err != nil {
		return fmt.Errorf("parse url %q: %w", *target, err)
	}
	tc, err := clientTLS(*ca, *sni)
	if err != nil {
		return err
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		MaxIdleConnsPerHost: *conns,
		MaxConnsPerHost:     *conns,
		DisableCompression:  true,
	}
	if *proxy != "" {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: *proxy})
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var errs atomic.Int64
	lats := make([][]time.Duration, *conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range *conns {
		wg.Go(func() {
			// Paced: connection i sends at start + i*gap/conns + k*gap; one
			// that falls behind starts again from now instead of bursting.
			gap := time.Duration(0)
			if *rate > 0 {
				gap = time.Duration(float64(*conns) / *rate * float64(time.Second))
			}
			next := start.Add(gap * time.Duration(i) / time.Duration(*conns))
			for ctx.Err() == nil {
				if gap > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(d):
						}
					}
					next = next.Add(gap)
					if now := time.Now(); next.Before(now) {
						next = now
					}
				}
				t0 := time.Now()
				resp, err := client.Get(u.String())
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
					continue
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return fmt.Errorf("no successful request (%d errors)", errs.Load())
	}
	slices.Sort(all)
	fmt.Printf("requests %d rps %.0f p50_us %d p99_us %d errors %d\n", len(all), float64(len(all))/el.Seconds(),
		all[len(all)/2].Microseconds(), all[min(len(all)-1, len(all)*99/100)].Microseconds(), errs.Load())
	return nil
}

// rss is the resident set of pids together, in KiB.
func rss(pids []int) (int64, error) {
	var sum int64
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("read rss of %d: %w", pid, err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				sum += n
			}
		}
		f.Close()
	}
	return sum, nil
}

// idle opens n TLS connections (through an explicit proxy if given),
// sends one request on each, keeps them open and idle, and prints the
// growth of the resident memory of the measured processes per
// connection: "idle N rss_before_kib B rss_after_kib A kib_per_conn K".
func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	target := fs.String("addr", "", "host:port to connect to")
	proxy := fs.String("proxy", "", "explicit proxy host:port (CONNECT)")
	ca := fs.String("ca", "", "PEM bundle to trust")
	sni := fs.String("sni", "", "TLS server name")
	n := fs.Int("n", 1000, "connections")
	pidList := fs.String("pids", "ppid", "comma-separated pids to measure, or ppid")
	settle := fs.Duration("settle", 3*time.Second, "wait before measuring")
	limit := fs.Duration("timeout", 120*time.Second, "give up after")
	h2 := fs.Bool("h2", false, "speak HTTP/2 (one GET per connection) instead of HTTP/1.1")
	snapDir := fs.String("snapshot", "", "after measuring, write each pid's /proc status and smaps_rollup to this directory")
	pprofAddr := fs.String("pprof", "", "with -snapshot: also the heap profile (its MemStats) and goroutines of a pprof build's SLUICE_PPROF listener at this host:port")
	fs.Parse(args)
	if *pprofAddr != "" && *snapDir == "" {
		return fmt.Errorf("idle: -pprof needs -snapshot DIR")
	}
	var pids []int
	for _, p := range strings.Split(*pidList, ",") {
		if p == "ppid" {
			pids = append(pids, os.Getppid())
			continue
		}
		v, err := strconv.Atoi(p)
		if err != nil {
			return fmt.Errorf("parse pid %q: %w", p, err)
		}
		pids = append(pids, v)
	}
	tc, err := clientTLS(*ca, *sni)
	if err != nil {
		return err
	}
	if *h2 {
		tc.NextProtos = []string{"h2"}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, *limit)
	defer cancel2()
	time.Sleep(*settle)
	before, err := rss(pids)
	if err != nil {
		return err
	}
	conns := make([]net.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\n\r\n", *sni)
	sem := make(chan struct{}, 64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	for range *n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dialOne(ctx, *target, *proxy, tc, req, *h2)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c)
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("%d of %d connections: %w", *n-len(conns), *n, firstErr)
	}
	runtime.GC()
	time.Sleep(*settle)
	after, err := rss(pids)
	if err != nil {
		return err
	}
	fmt.Printf("idle %d rss_before_kib %d rss_after_kib %d kib_per_conn %.1f\n", len(conns), before, after,
		float64(after-before)/float64(len(conns)))
	if *snapDir != "" {
		// After the figure, so that reading the profiles can't change it.
		if err := snapshot(*snapDir, pids, *pprofAddr); err != nil {
			return err
		}
	}
	return nil
}

// snapshot writes, for a look at where the resident memory of the held
// connections is, each pid's /proc status and smaps_rollup, and with a
// pprof listener its heap profile (debug=1 ends with the runtime's
// MemStats: heap in use, idle, released, stacks) and goroutines.
func snapshot(dir string, pids []int, pprofAddr string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for _, pid := range pids {
		for _, name := range []string{"status", "smaps_rollup"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
			if err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			if err := os.WriteFile(fmt.Sprintf("%s/%d.%s", dir, pid, name), b, 0o644); err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
		}
	}
	if pprofAddr == "" {
		return nil
	}
	// In this order: the heap as the figure saw it, then after a
	// collection (gc=1) what the held connections keep alive.
	for _, f := range []struct{ name, path string }{
		{"heap.txt", "/debug/pprof/heap?debug=1"},
		{"heap-gc.pb.gz", "/debug/pprof/heap?gc=1"},
		{"heap-gc.txt", "/debug/pprof/heap?debug=1"},
		{"goroutine.txt", "/debug/pprof/goroutine?debug=1"},
	} {
		resp, err := http.Get("http://" + pprofAddr + f.path)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", f.path, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("snapshot %s: %s (is %s a pprof build's SLUICE_PPROF listener?)", f.path, resp.Status, pprofAddr)
		}
		if err := os.WriteFile(dir+"/"+f.name, b, 0o644); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	return nil
}

// dialOne opens one TLS connection, sends req and reads the answer's head
// and small body.
func dialOne(ctx context.Context, target, proxy string, tc *tls.Config, req string, h2 bool) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	addr := target
	if proxy != "" {
		addr = proxy
	}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	if proxy != "" {
		fmt.Fprintf(raw, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			raw.Close()
			return nil, errors.Join(fmt.Errorf("connect through %s", proxy), err)
		}
	}
	c := tls.Client(raw, tc)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("handshake with %s: %w", target, err)
	}
	var resp *http.Response
	if h2 {
		if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
			c.Close()
			return nil, fmt.Errorf("%s negotiated %q, not h2", target, p)
		}
		// x/net's client: its read loop stays, in this process (not
		// measured); it sends nothing while idle.
		//lint:ignore SA1019 net/http's Transport can't take over a connection dialed (and CONNECTed) here
		cc, err := (&http2.Transport{}).NewClientConn(c)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("start HTTP/2: %w", err)
		}
		r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+tc.ServerName+"/", nil)
		if resp, err = cc.RoundTrip(r); err != nil {
			c.Close()
			return nil, fmt.Errorf("HTTP/2 request: %w", err)
		}
	} else {
		if _, err := io.WriteString(c, req); err != nil {
			c.Close()
			return nil, fmt.Errorf("write request: %w", err)
		}
		if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			c.Close()
			return nil, fmt.Errorf("read response: %w", err)
		}
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	raw.SetDeadline(time.Time{})
	return c, nil
}
