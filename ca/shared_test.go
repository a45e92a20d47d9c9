package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// memStore is a SharedStore with the API server's rules for a Secret:
// creating one that exists fails, and so does an update whose version is
// not the current one.
type memStore struct {
	mu      sync.Mutex
	exists  bool
	files   map[string][]byte
	version int
	// beforePut, when set, runs before each Put takes effect: another
	// agent's write landing between this agent's Get and Put.
	beforePut func(s *memStore)
	puts      int
}

func (s *memStore) String() string { return "store mem" }

func (s *memStore) Get(ctx context.Context) (map[string][]byte, string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.exists {
		return nil, "", false, nil
	}
	return maps.Clone(s.files), strconv.Itoa(s.version), true, nil
}

func (s *memStore) Put(ctx context.Context, files map[string][]byte, version string) (bool, error) {
	if s.beforePut != nil {
		s.beforePut(s)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.puts++
	if version == "" && s.exists || version != "" && version != strconv.Itoa(s.version) {
		return false, nil
	}
	s.exists, s.files = true, maps.Clone(files)
	s.version++
	return true, nil
}

// set replaces what the store holds, as an operator's kubectl would.
func (s *memStore) set(files map[string][]byte) {
	s.mu.Lock()
	s.exists, s.files = true, files
	s.version++
	s.mu.Unlock()
}

// dirFiles is the two files of a CA that Init wrote to a directory.
func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, f := range []string{CertFile, KeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	return files
}

func TestSharedCreatesWhenAbsent(t *testing.T) {
	s := &memStore{}
	a, created, err := LoadOrInitShared(context.Background(), s, Options{KeyType: KeyRSA})
	if err != nil || !created {
		t.Fatalf("LoadOrInitShared: created %v, %v", created, err)
	}
	if a.KeyType() != "RSA 2048" {
		t.Errorf("KeyType %q", a.KeyType())
	}
	// What was stored is the CA, in the files a directory would hold:
	// a second agent (or a restart) loads the same one.
	if !bytes.Equal(s.files[CertFile], a.BundlePEM()) {
		t.Errorf("stored %s is not the CA's certificate", CertFile)
	}
	if _, err := parseKeyPEM(s.files[KeyFile], "stored"); err != nil {
		t.Errorf("stored %s: %v", KeyFile, err)
	}
	b, created, err := LoadOrInitShared(context.Background(), s, Options{})
	if err != nil || created {
		t.Fatalf("second agent: created %v, %v", created, err)
	}
	if b.Fingerprint() != a.Fingerprint() {
		t.Errorf("second agent has CA %s, want %s", b.Fingerprint(), a.Fingerprint())
	}
}

func TestSharedLoadsBringYourOwn(t *testing.T) {
	mine, dir := newCA(t, Options{})
	s := &memStore{}
	s.set(dirFiles(t, dir))
	a, created, err := LoadOrInitShared(context.Background(), s, Options{})
	if err != nil || created {
		t.Fatalf("LoadOrInitShared: created %v, %v", created, err)
	}
	if a.Fingerprint() != mine.Fingerprint() {
		t.Errorf("loaded %s, want the operator's %s", a.Fingerprint(), mine.Fingerprint())
	}
	if s.puts != 0 {
		t.Errorf("%d writes to a store that held a CA", s.puts)
	}
}

// An empty Secret made ahead (say, by a manifest, to carry labels or an
// owner) is filled, and what else it held is kept.
func TestSharedFillsAnEmptyStoreKeepingOtherFiles(t *testing.T) {
	s := &memStore{}
	s.set(map[string][]byte{"note": []byte("made by hand")})
	a, created, err := LoadOrInitShared(context.Background(), s, Options{})
	if err != nil || !created {
		t.Fatalf("LoadOrInitShared: created %v, %v", created, err)
	}
	if string(s.files["note"]) != "made by hand" {
		t.Errorf("other file became %q", s.files["note"])
	}
	if !bytes.Equal(s.files[CertFile], a.BundlePEM()) {
		t.Error("the CA was not stored")
	}
}

func TestSharedRefusesHalfACA(t *testing.T) {
	_, dir := newCA(t, Options{})
	full := dirFiles(t, dir)
	for _, tc := range []struct {
		keep, want string
	}{
		{CertFile, "holds ca.crt but no ca.key: restore the key, or remove ca.crt"},
		{KeyFile, "holds ca.key but no ca.crt: restore the certificate, or remove ca.key"},
	} {
		t.Run(tc.keep, func(t *testing.T) {
			s := &memStore{}
			s.set(map[string][]byte{tc.keep: full[tc.keep]})
			_, _, err := LoadOrInitShared(context.Background(), s, Options{})
			if err == nil || !strings.Contains(err.Error(), "store mem "+tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
			if s.puts != 0 {
				t.Error("a half CA was overwritten")
			}
		})
	}
}

func TestSharedRefusesWhatDoesNotParse(t *testing.T) {
	_, dir := newCA(t, Options{})
	_, odir := newCA(t, Options{})
	good, other := dirFiles(t, dir), dirFiles(t, odir)
	for _, tc := range []struct {
		name       string
		cert, key  []byte
		want       string
		secretPart []byte // must not be in the error
	}{
		{"junk cert", []byte("junk"), good[KeyFile], "read certificate store mem ca.crt: no PEM CERTIFICATE block", nil},
		{"junk key", good[CertFile], []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "read key store mem ca.key", nil},
		{"other key", good[CertFile], other[KeyFile], "does not match", other[KeyFile][30:60]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &memStore{}
			s.set(map[string][]byte{CertFile: tc.cert, KeyFile: tc.key})
			_, _, err := LoadOrInitShared(context.Background(), s, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
			if tc.secretPart != nil && strings.Contains(err.Error(), string(tc.secretPart)) {
				t.Error("the error carries key material")
			}
			if s.puts != 0 {
				t.Error("a store holding a CA was overwritten")
			}
		})
	}
}

// Agents starting together on many nodes end with one CA: each one that
// loses the race to create it loads the winner's.
func TestSharedConcurrentAgentsAgreeOnOneCA(t *testing.T) {
	s := &memStore{}
	const agents = 8
	var (
		wg      sync.WaitGroup
		got     [agents]*Authority
		created [agents]bool
		errs    [agents]error
	)
	start := make(chan struct{})
	for i := range agents {
		wg.Go(func() {
			<-start
			got[i], created[i], errs[i] = LoadOrInitShared(context.Background(), s, Options{})
		})
	}
	close(start)
	wg.Wait()
	creators := 0
	for i := range agents {
		if errs[i] != nil {
			t.Fatalf("agent %d: %v", i, errs[i])
		}
		if created[i] {
			creators++
		}
		if got[i].Fingerprint() != got[0].Fingerprint() {
			t.Errorf("agent %d has CA %s, agent 0 has %s", i, got[i].Fingerprint(), got[0].Fingerprint())
		}
	}
	if creators != 1 {
		t.Errorf("%d agents say they created the CA, want 1", creators)
	}
	// A leaf one agent mints verifies under another's CA: a client that
	// trusts the bundle of any node trusts them all.
	leaf, err := got[agents-1].Leaf(context.Background(), "api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(got[0].Certificate())
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "api.example.com", Roots: roots}); err != nil {
		t.Errorf("leaf of agent %d under agent 0's CA: %v", agents-1, err)
	}
}

// An agent whose create loses to another's loads that one, and says it
// did not create it.
func TestSharedLosingTheRaceLoadsTheWinner(t *testing.T) {
	winner, dir := newCA(t, Options{})
	s := &memStore{}
	s.beforePut = func(s *memStore) {
		s.beforePut = nil
		s.set(dirFiles(t, dir))
	}
	a, created, err := LoadOrInitShared(context.Background(), s, Options{})
	if err != nil || created {
		t.Fatalf("LoadOrInitShared: created %v, %v", created, err)
	}
	if a.Fingerprint() != winner.Fingerprint() {
		t.Errorf("loaded %s, want the winner's %s", a.Fingerprint(), winner.Fingerprint())
	}
}

// A store that changes under every attempt without ever holding a CA
// ends the start with an error, not a loop.
func TestSharedGivesUpOnAStoreThatNeverSettles(t *testing.T) {
	s := &memStore{}
	s.beforePut = func(s *memStore) { s.set(map[string][]byte{"churn": nil}) }
	_, _, err := LoadOrInitShared(context.Background(), s, Options{})
	if !errors.Is(err, errStoreUnsettled) || !strings.Contains(err.Error(), "create ca in store mem") {
		t.Fatalf("error %v, want %v", err, errStoreUnsettled)
	}
	if s.puts != sharedTries {
		t.Errorf("%d writes, want %d", s.puts, sharedTries)
	}
}

type failingStore struct{ memStore }

func (*failingStore) Get(context.Context) (map[string][]byte, string, bool, error) {
	return nil, "", false, errors.New("kubernetes api: GET /api/v1/namespaces/x/secrets/y: 403 Forbidden")
}

func TestSharedStoreErrorIsReturned(t *testing.T) {
	_, _, err := LoadOrInitShared(context.Background(), &failingStore{}, Options{})
	if err == nil || !strings.Contains(err.Error(), "load ca: kubernetes api: GET") {
		t.Fatalf("error %v", err)
	}
}

func TestSharedBadOptionsTouchNothing(t *testing.T) {
	s := &memStore{}
	_, _, err := LoadOrInitShared(context.Background(), s, Options{KeyType: "dsa"})
	if err == nil || !strings.Contains(err.Error(), `"dsa"`) {
		t.Fatalf("error %v", err)
	}
	if s.puts != 0 || s.exists {
		t.Error("bad options wrote to the store")
	}
}
