package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is an injectable, settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func newCA(t *testing.T, o Options) (*Authority, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := Init(dir, o)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return a, dir
}

func TestInitLoadRoundTrip(t *testing.T) {
	for _, kt := range []struct {
		opt, want string
	}{{"", "ECDSA P-256"}, {KeyECDSA, "ECDSA P-256"}, {KeyRSA, "RSA 2048"}} {
		t.Run(kt.opt, func(t *testing.T) {
			a, dir := newCA(t, Options{KeyType: kt.opt})
			b, err := Load(dir, Options{})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if a.Fingerprint() != b.Fingerprint() {
				t.Errorf("fingerprint after load %s, want %s", b.Fingerprint(), a.Fingerprint())
			}
			if !bytes.Equal(a.BundlePEM(), b.BundlePEM()) {
				t.Error("bundle differs after load")
			}
			if got := b.KeyType(); got != kt.want {
				t.Errorf("KeyType %q, want %q", got, kt.want)
			}
			if !publicKeyEqual(b.key.Public(), a.key.Public()) {
				t.Error("loaded key differs")
			}
			c := b.Certificate()
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Error("not a CA certificate")
			}
			if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("KeyUsage %v", c.KeyUsage)
			}
			if len(c.SubjectKeyId) == 0 {
				t.Error("no SKI")
			}
			if !strings.HasPrefix(c.Subject.CommonName, "Sluice CA ") {
				t.Errorf("subject CN %q", c.Subject.CommonName)
			}
			now := time.Now()
			if !c.NotBefore.Before(now.Add(-59*time.Minute)) || c.NotAfter.Before(now.Add(9*365*24*time.Hour)) {
				t.Errorf("validity %s..%s", c.NotBefore, c.NotAfter)
			}
			if c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %d bits", c.SerialNumber.BitLen())
			}
			// The key file is PKCS#8 PEM.
			kb, err := os.ReadFile(filepath.Join(dir, KeyFile))
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(kb)
			if blk == nil || blk.Type != "PRIVATE KEY" {
				t.Fatalf("key file is not a PEM PRIVATE KEY")
			}
			if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
				t.Fatalf("key is not PKCS#8: %v", err)
			}
		})
	}
}

func TestFileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no unix permissions on windows")
	}
	_, dir := newCA(t, Options{})
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{dir, 0o700}, {filepath.Join(dir, KeyFile), 0o600}, {filepath.Join(dir, CertFile), 0o644}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.want {
			t.Errorf("%s mode %04o, want %04o", c.path, fi.Mode().Perm(), c.want)
		}
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want only ca.crt and ca.key", names)
	}
}

func TestLoadRefusesReadableKey(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no unix permissions on windows")
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		_, dir := newCA(t, Options{})
		kp := filepath.Join(dir, KeyFile)
		if err := os.Chmod(kp, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir, Options{})
		if err == nil {
			t.Fatalf("mode %04o: Load succeeded", mode)
		}
		for _, want := range []string{kp, "chmod 600 " + kp} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("mode %04o: error %q does not contain %q", mode, err, want)
			}
		}
		// LoadOrInit must refuse too, never replace the CA.
		if _, err := LoadOrInit(dir, Options{}); err == nil {
			t.Errorf("mode %04o: LoadOrInit succeeded", mode)
		}
		if err := os.Chmod(kp, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir, Options{}); err != nil {
			t.Errorf("after chmod 600: %v", err)
		}
	}
}

func TestInitRefusesExisting(t *testing.T) {
	a, dir := newCA(t, Options{})
	_, err := Init(dir, Options{})
	if !errors.Is(err, ErrExist) {
		t.Fatalf("second Init: %v, want ErrExist", err)
	}
	b, err := LoadOrInit(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Fingerprint() != a.Fingerprint() {
		t.Error("LoadOrInit replaced the existing CA")
	}
	// Only one of the two files: refuse rather than guess.
	if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrInit(dir, Options{}); err == nil || !strings.Contains(err.Error(), KeyFile) {
		t.Errorf("LoadOrInit with only ca.crt: %v", err)
	}
	if _, err := Init(dir, Options{}); !errors.Is(err, ErrExist) {
		t.Errorf("Init with only ca.crt: %v", err)
	}
}

func TestLoadOrInitCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	a, err := LoadOrInit(dir, Options{KeyType: KeyRSA})
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyType() != "RSA 2048" {
		t.Errorf("KeyType %q", a.KeyType())
	}
	b, err := LoadOrInit(dir, Options{})
	if err != nil || b.Fingerprint() != a.Fingerprint() {
		t.Fatalf("second LoadOrInit: %v", err)
	}
}

func TestBadOptions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	_, err := Init(dir, Options{KeyType: "dsa", LeafCacheSize: -1, LeafLifetime: -time.Hour})
	if err == nil {
		t.Fatal("Init accepted bad options")
	}
	for _, want := range []string{`"dsa"`, "-1", "-1h0m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("Init with bad options created the directory")
	}
}

func TestLoadErrors(t *testing.T) {
	a, dir := newCA(t, Options{})
	_ = a
	other, odir := newCA(t, Options{})
	_ = other
	// A key that does not match the certificate.
	kb, _ := os.ReadFile(filepath.Join(odir, KeyFile))
	if err := os.WriteFile(filepath.Join(dir, KeyFile), kb, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, Options{}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	// Garbage certificate.
	if err := os.WriteFile(filepath.Join(dir, CertFile), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, Options{}); err == nil || !strings.Contains(err.Error(), CertFile) {
		t.Errorf("garbage cert: %v", err)
	}
	// Missing directory.
	if _, err := Load(filepath.Join(t.TempDir(), "nope"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
}

// leafCases are the names TestLeaf mints for.
var leafCases = []struct {
	name    string
	wantDNS string
	wantIP  string
}{
	{name: "api.example.com", wantDNS: "api.example.com"},
	{name: "API.Example.COM.", wantDNS: "api.example.com"},
	{name: "bücher.example", wantDNS: "xn--bcher-kva.example"},
	{name: "r3---sn-abc.example.net", wantDNS: "r3---sn-abc.example.net"},
	{name: "_svc.example", wantDNS: "_svc.example"},
	{name: "192.0.2.7", wantIP: "192.0.2.7"},
	{name: "::ffff:192.0.2.8", wantIP: "192.0.2.8"},
	{name: "2001:db8::1", wantIP: "2001:db8::1"},
	{name: "[2001:db8::2]", wantIP: "2001:db8::2"},
}

func TestLeaf(t *testing.T) {
	for _, kt := range []string{KeyECDSA, KeyRSA} {
		t.Run(kt, func(t *testing.T) {
			a, _ := newCA(t, Options{KeyType: kt})
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(a.BundlePEM()) {
				t.Fatal("bundle does not parse")
			}
			serials := map[string]string{} // serial -> SAN it was minted for
			for _, c := range leafCases {
				t.Run(c.name, func(t *testing.T) {
					now := time.Now()
					tc, err := a.Leaf(context.Background(), c.name)
					if err != nil {
						t.Fatalf("Leaf: %v", err)
					}
					checkLeaf(t, a, tc, now)
					l := tc.Leaf
					if c.wantDNS != "" {
						if len(l.DNSNames) != 1 || l.DNSNames[0] != c.wantDNS || len(l.IPAddresses) != 0 {
							t.Errorf("SANs DNS %v IP %v, want DNS %s", l.DNSNames, l.IPAddresses, c.wantDNS)
						}
					} else {
						want := netip.MustParseAddr(c.wantIP)
						if len(l.IPAddresses) != 1 || len(l.DNSNames) != 0 {
							t.Fatalf("SANs DNS %v IP %v, want IP %s", l.DNSNames, l.IPAddresses, want)
						}
						got, _ := netip.AddrFromSlice(l.IPAddresses[0])
						if got.Unmap() != want {
							t.Errorf("SAN IP %s, want %s", got, want)
						}
					}
					s, san := l.SerialNumber.String(), c.wantDNS+c.wantIP
					if prev, ok := serials[s]; ok && prev != san {
						t.Errorf("serial %s used for %s and %s", s, prev, san)
					}
					serials[s] = san
					// The chain verifies against a pool holding only the bundle.
					inter := x509.NewCertPool()
					opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
					if c.wantDNS != "" {
						opts.DNSName = c.wantDNS
					}
					if _, err := l.Verify(opts); err != nil {
						t.Errorf("verify: %v", err)
					}
					if c.wantIP != "" {
						if err := l.VerifyHostname(c.wantIP); err != nil {
							t.Errorf("VerifyHostname(%s): %v", c.wantIP, err)
						}
					}
					if c.wantDNS == "api.example.com" {
						if err := l.VerifyHostname("other.example.com"); err == nil {
							t.Error("leaf also valid for other.example.com")
						}
					}
				})
			}
		})
	}
}

// checkLeaf asserts the properties every leaf must have.
func checkLeaf(t *testing.T, a *Authority, tc *tls.Certificate, now time.Time) {
	t.Helper()
	if len(tc.Certificate) != 2 {
		t.Fatalf("chain length %d, want 2 (leaf, ca)", len(tc.Certificate))
	}
	if !bytes.Equal(tc.Certificate[1], a.Certificate().Raw) {
		t.Error("chain[1] is not the CA")
	}
	l := tc.Leaf
	if l == nil || !bytes.Equal(l.Raw, tc.Certificate[0]) {
		t.Fatal("Leaf field not set to chain[0]")
	}
	if l.IsCA {
		t.Error("leaf is a CA")
	}
	if len(l.ExtKeyUsage) != 1 || l.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("EKU %v", l.ExtKeyUsage)
	}
	if l.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage %v", l.KeyUsage)
	}
	if !bytes.Equal(l.AuthorityKeyId, a.Certificate().SubjectKeyId) || len(l.AuthorityKeyId) == 0 {
		t.Errorf("AKI %x, CA SKI %x", l.AuthorityKeyId, a.Certificate().SubjectKeyId)
	}
	if l.SerialNumber.BitLen() < 64 || l.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %d bits", l.SerialNumber.BitLen())
	}
	if l.NotBefore.After(now.Add(-59 * time.Minute)) {
		t.Errorf("NotBefore %s not backdated (now %s)", l.NotBefore, now)
	}
	if l.NotAfter.After(a.Certificate().NotAfter) {
		t.Error("leaf outlives the CA")
	}
	pub, ok := l.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("leaf key %s, want ECDSA P-256", DescribeKey(l.PublicKey))
	}
	if pub != nil && pub.Equal(a.key.Public()) {
		t.Error("leaf uses the CA key")
	}
	priv, ok := tc.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !priv.PublicKey.Equal(l.PublicKey) {
		t.Error("PrivateKey does not match the leaf")
	}
	if err := l.CheckSignatureFrom(a.Certificate()); err != nil {
		t.Errorf("signature: %v", err)
	}
}

func TestLeafLifetime(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	a, err := New(Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := a.Leaf(context.Background(), "x.example")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tc.Leaf.NotAfter, clk.t.Add(DefaultLeafLifetime); !got.Equal(want) {
		t.Errorf("NotAfter %s, want %s", got, want)
	}
	if got, want := tc.Leaf.NotBefore, clk.t.Add(-time.Hour); !got.Equal(want) {
		t.Errorf("NotBefore %s, want %s", got, want)
	}
	// Near the CA's end, a leaf stops at the CA's NotAfter.
	clk.Set(a.Certificate().NotAfter.Add(-48 * time.Hour))
	tc, err = a.Leaf(context.Background(), "y.example")
	if err != nil {
		t.Fatal(err)
	}
	if !tc.Leaf.NotAfter.Equal(a.Certificate().NotAfter) {
		t.Errorf("NotAfter %s, want the CA's %s", tc.Leaf.NotAfter, a.Certificate().NotAfter)
	}
	// After the CA's end, no leaf.
	clk.Set(a.Certificate().NotAfter.Add(time.Second))
	if _, err := a.Leaf(context.Background(), "z.example"); err == nil || !strings.Contains(err.Error(), "ca expired") {
		t.Errorf("Leaf after CA expiry: %v", err)
	}
}

func TestLeafRenewal(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{t: t0}
	a, err := New(Options{Now: clk.Now, LeafLifetime: 6 * time.Hour}) // lifetime 7h with backdating
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := a.Leaf(ctx, "renew.example")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		at      time.Duration
		renewed bool
	}{
		{at: time.Hour},                                   // 5h of 7h left
		{at: 3*time.Hour + 39*time.Minute},                // 2h21m left, more than a third
		{at: 3*time.Hour + 41*time.Minute, renewed: true}, // 2h19m left: renew
	}
	for _, s := range steps {
		clk.Set(t0.Add(s.at))
		got, err := a.Leaf(ctx, "renew.example")
		if err != nil {
			t.Fatal(err)
		}
		if renewed := got != first; renewed != s.renewed {
			t.Errorf("at +%s renewed=%v, want %v", s.at, renewed, s.renewed)
		}
		if s.renewed && !got.Leaf.NotAfter.Equal(t0.Add(s.at+6*time.Hour)) {
			t.Errorf("renewed NotAfter %s", got.Leaf.NotAfter)
		}
	}
	st := a.Stats()
	if st.Issued != 2 || st.Hits != 2 || st.Misses != 2 || st.Size != 1 {
		t.Errorf("stats %+v, want Issued 2 Hits 2 Misses 2 Size 1", st)
	}
}

func TestLeafConcurrentOneIssuance(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	certs := make([]*tls.Certificate, n)
	var failed atomic.Int32
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := a.Leaf(context.Background(), "same.example")
			if err != nil {
				failed.Add(1)
				return
			}
			certs[i] = c
		}()
	}
	close(start)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
	for i, c := range certs {
		if c != certs[0] {
			t.Fatalf("call %d got a different certificate", i)
		}
	}
	st := a.Stats()
	if st.Issued != 1 || st.Hits+st.Misses != n || st.Size != 1 {
		t.Errorf("stats %+v, want Issued 1, Hits+Misses %d, Size 1", st, n)
	}
	// Normalized variants share the entry.
	c, err := a.Leaf(context.Background(), "SAME.example.")
	if err != nil || c != certs[0] {
		t.Errorf("variant name got another certificate (err %v)", err)
	}
}

func TestLeafLRUBound(t *testing.T) {
	a, err := New(Options{LeafCacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	leaf := func(n string) *tls.Certificate {
		t.Helper()
		c, err := a.Leaf(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a1 := leaf("a.example")
	leaf("b.example")
	if leaf("a.example") != a1 { // a is now most recent, b least
		t.Fatal("a.example not cached")
	}
	leaf("c.example") // evicts b
	if st := a.Stats(); st.Size != 2 || st.Issued != 3 {
		t.Fatalf("stats %+v, want Size 2 Issued 3", st)
	}
	if leaf("a.example") != a1 {
		t.Error("a.example evicted, want b.example evicted")
	}
	leaf("b.example")
	if st := a.Stats(); st.Size != 2 || st.Issued != 4 {
		t.Errorf("stats %+v, want Size 2 Issued 4 (b reissued)", st)
	}
}

func TestLeafBadNames(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"", " ", "*.example.com", "a b.example", "a..example", ".", "exa/mple", strings.Repeat("a", 64) + ".example", "a@b"} {
		if c, err := a.Leaf(context.Background(), n); err == nil {
			t.Errorf("Leaf(%q) = %v, want error", n, c.Leaf.DNSNames)
		}
	}
	if st := a.Stats(); st.Issued != 0 {
		t.Errorf("issued %d for bad names", st.Issued)
	}
}

func TestLeafContextCanceled(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Either the issuance wins the race or ctx does; never a hang, never
	// a nil certificate without an error.
	c, err := a.Leaf(ctx, "c.example")
	if (c == nil) == (err == nil) {
		t.Fatalf("Leaf = %v, %v", c, err)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

// TestTLSHandshake serves TLS on loopback with GetCertificate and checks
// that a client trusting only the bundle connects, with SNI and, for a
// client that sends none, by the IP it dialed.
func TestTLSHandshake(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvCfg := &tls.Config{GetCertificate: a.GetCertificate}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, srvCfg)
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.Handshake() == nil {
				_, _ = tc.Write([]byte("ok"))
			}
			tc.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.BundlePEM())
	for _, sn := range []string{"svc.example", "127.0.0.1"} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
			&tls.Config{RootCAs: pool, ServerName: sn})
		if err != nil {
			t.Errorf("handshake for %s: %v", sn, err)
			continue
		}
		b, _ := io.ReadAll(conn)
		conn.Close()
		if string(b) != "ok" {
			t.Errorf("%s: read %q", sn, b)
		}
	}
	ln.Close()
	<-done
	if st := a.Stats(); st.Issued != 2 {
		t.Errorf("issued %d, want 2", st.Issued)
	}
}

// TestOpenSSLVerify checks the chain with the real openssl binary.
func TestOpenSSLVerify(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found and CI=true: install openssl")
		}
		t.Skip("openssl not found")
	}
	for _, kt := range []string{KeyECDSA, KeyRSA} {
		a, _ := newCA(t, Options{KeyType: kt})
		dir := t.TempDir()
		bundle := filepath.Join(dir, "bundle.pem")
		if err := os.WriteFile(bundle, a.BundlePEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		// openssl prints the same fingerprint.
		out, err := exec.Command(bin, "x509", "-noout", "-fingerprint", "-sha256", "-in", bundle).CombinedOutput()
		if err != nil || !strings.Contains(strings.ToUpper(string(out)), "="+a.Fingerprint()) {
			t.Errorf("openssl fingerprint %q (err %v), ours %s", out, err, a.Fingerprint())
		}
		for _, n := range []string{"openssl.example", "bücher.example", "192.0.2.9"} {
			tc, err := a.Leaf(context.Background(), n)
			if err != nil {
				t.Fatal(err)
			}
			lp := filepath.Join(dir, "leaf.pem")
			if err := os.WriteFile(lp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tc.Certificate[0]}), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "verify", "-purpose", "sslserver", "-CAfile", bundle, lp).CombinedOutput()
			if err != nil || !strings.Contains(string(out), ": OK") {
				t.Errorf("%s %s: openssl verify: %v\n%s", kt, n, err, out)
			}
		}
		// The check can fail: a leaf from another CA is rejected.
		other, err := New(Options{})
		if err != nil {
			t.Fatal(err)
		}
		tc, _ := other.Leaf(context.Background(), "openssl.example")
		lp := filepath.Join(dir, "foreign.pem")
		_ = os.WriteFile(lp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tc.Certificate[0]}), 0o644)
		if out, err := exec.Command(bin, "verify", "-CAfile", bundle, lp).CombinedOutput(); err == nil {
			t.Errorf("openssl accepted a foreign leaf:\n%s", out)
		}
	}
}

func TestFingerprintFormat(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	fp := a.Fingerprint()
	if len(fp) != 32*3-1 || strings.Count(fp, ":") != 31 || strings.ToUpper(fp) != fp {
		t.Errorf("fingerprint %q", fp)
	}
	if _, ok := a.key.(*rsa.PrivateKey); ok {
		t.Error("default key is RSA")
	}
}
