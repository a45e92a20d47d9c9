package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// ErrExist is returned (wrapped) by Init when the directory already holds
// a CA certificate or key.
var ErrExist = errors.New("a CA already exists")

// Init creates a new CA in dir and writes ca.crt (0644) and ca.key (0600,
// PKCS#8). dir is created with mode 0700 if missing. It refuses to
// overwrite: if either file exists, the error wraps ErrExist.
func Init(dir string, o Options) (*Authority, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("init ca in %s: %w", dir, err)
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("init ca: %s: %w (load it, or remove %s and %s first)", p, ErrExist, certPath, keyPath)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init ca: %w", err)
		}
	}
	if err := mkdirPrivate(dir); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	certDER, key, err := create(o)
	if err != nil {
		return nil, fmt.Errorf("init ca in %s: %w", dir, err)
	}
	certPEM, keyPEM, err := encodePEM(certDER, key)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	// The key first: a directory with a key and no certificate is refused
	// by Load and by Init, never silently half-used.
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	return newAuthority(certDER, key, o)
}

// encodePEM is the CA as its two files: the certificate, and the key in
// PKCS#8.
func encodePEM(certDER []byte, key crypto.Signer) (certPEM, keyPEM []byte, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return certPEM, keyPEM, nil
}

// mkdirPrivate creates dir (and parents) if missing and makes sure a
// directory it created has mode 0700 whatever the umask. An existing
// directory is left as it is.
func mkdirPrivate(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("create directory %s: exists and is not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	return nil
}

// writeNew writes b to a temporary file in the same directory with the
// given mode (set explicitly, so the umask cannot widen or narrow it),
// syncs it and links it into place, failing if path already exists.
func writeNew(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful link, this removes the temporary name only
	// CreateTemp makes the file 0600; set the final mode before any byte
	// is written, so a key is never readable by others, even briefly.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// os.Link fails if path exists, unlike Rename: two concurrent Inits
	// cannot overwrite each other's key.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write %s: %w", path, ErrExist)
		}
		// A file system without hard links: check, then rename (a
		// narrow race with another Init, which Init's check already
		// made unlikely).
		if ok, _ := exists(path); ok {
			return fmt.Errorf("write %s: %w", path, ErrExist)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

// Load reads the CA from dir. It refuses a key file that group or others
// can read, naming the file and the fix. Options.KeyType is ignored.
// An expired CA loads (so it can be shown); Leaf then fails.
func Load(dir string, o Options) (*Authority, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("load ca from %s: %w", dir, err)
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	certDER, err := readCert(certPath)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	a, err := newAuthority(certDER, key, o)
	if err != nil {
		return nil, fmt.Errorf("load ca from %s: %w", dir, err)
	}
	return a, nil
}

// LoadOrInit loads the CA in dir, or creates one if dir holds neither
// ca.crt nor ca.key. If only one of the two exists it fails rather than
// overwrite or guess.
func LoadOrInit(dir string, o Options) (*Authority, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	certOK, err := exists(certPath)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	keyOK, err := exists(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	switch {
	case certOK && keyOK:
		return Load(dir, o)
	case !certOK && !keyOK:
		return Init(dir, o)
	case certOK:
		return nil, fmt.Errorf("load ca: %s exists but %s is missing: restore the key, or remove %s to create a new CA", certPath, keyPath, certPath)
	default:
		return nil, fmt.Errorf("load ca: %s exists but %s is missing: restore the certificate, or remove %s to create a new CA", keyPath, certPath, keyPath)
	}
}

func exists(p string) (bool, error) {
	_, err := os.Lstat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

func readCert(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	return parseCertPEM(b, path)
}

// parseCertPEM is the DER of the PEM CERTIFICATE in b, read from where.
func parseCertPEM(b []byte, where string) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("read certificate %s: no PEM CERTIFICATE block", where)
	}
	return blk.Bytes, nil
}

func readKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("read key %s: mode %04o lets group or others read the CA private key: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	return parseKeyPEM(b, path)
}

// parseKeyPEM is the signer of the PEM PRIVATE KEY (PKCS#8) in b, read
// from where. Its errors never include key material.
func parseKeyPEM(b []byte, where string) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("read key %s: no PEM PRIVATE KEY (PKCS#8) block", where)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		// The parser's error never includes key material.
		return nil, fmt.Errorf("read key %s: %w", where, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("read key %s: %T cannot sign", where, k)
	}
	return s, nil
}

// ReadCertificate reads only the CA certificate in dir (ca.crt), without
// the key: enough to show or export the CA where the key is not readable.
func ReadCertificate(dir string) (*x509.Certificate, error) {
	der, err := readCert(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", filepath.Join(dir, CertFile), err)
	}
	return c, nil
}
