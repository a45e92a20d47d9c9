package ca

import (
	"context"
	"errors"
	"fmt"
	"maps"
)

// SharedStore holds one CA for many agents, such as every node of a
// cluster sharing a Kubernetes Secret. Each agent loads the CA it holds;
// the first to find it missing or empty creates one in it, and an agent
// that loses that race loads the winner's.
type SharedStore interface {
	// Get returns what the store holds, by file name (CertFile,
	// KeyFile, and whatever else it keeps), and the version Put needs to
	// fill it. found is false when the store does not exist.
	Get(ctx context.Context) (files map[string][]byte, version string, found bool, err error)
	// Put stores files: a new store when version is "", else the
	// existing one, unchanged since version. ok is false, with no error,
	// when another agent was first: the store exists, or changed since
	// version.
	Put(ctx context.Context, files map[string][]byte, version string) (ok bool, err error)
	// String names the store in errors, e.g. "secret sluice-system/sluice-ca".
	String() string
}

// sharedTries bounds LoadOrInitShared's rounds of looking and creating:
// an agent that lost a race loads the winner's CA in the next round, so
// a third means the store keeps changing without ever holding a CA.
const sharedTries = 3

// LoadOrInitShared loads the CA in s, or creates one there when s does
// not exist or holds neither CertFile nor KeyFile (other files it holds
// are kept). created says this agent made it. A store with only one of
// the two is refused, as LoadOrInit refuses such a directory.
func LoadOrInitShared(ctx context.Context, s SharedStore, o Options) (a *Authority, created bool, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, false, fmt.Errorf("load ca from %s: %w", s, err)
	}
	for range sharedTries {
		files, version, found, err := s.Get(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("load ca: %w", err)
		}
		cert, key := files[CertFile], files[KeyFile]
		switch {
		case len(cert) > 0 && len(key) > 0:
			a, err := parseShared(s, cert, key, o)
			return a, false, err
		case len(cert) > 0:
			return nil, false, fmt.Errorf("load ca: %s holds %s but no %s: restore the key, or remove %s to have a new CA created", s, CertFile, KeyFile, CertFile)
		case len(key) > 0:
			return nil, false, fmt.Errorf("load ca: %s holds %s but no %s: restore the certificate, or remove %s to have a new CA created", s, KeyFile, CertFile, KeyFile)
		}
		if !found {
			version = ""
		}
		certDER, signer, err := create(o)
		if err != nil {
			return nil, false, fmt.Errorf("create ca in %s: %w", s, err)
		}
		certPEM, keyPEM, err := encodePEM(certDER, signer)
		if err != nil {
			return nil, false, fmt.Errorf("create ca in %s: %w", s, err)
		}
		put := maps.Clone(files)
		if put == nil {
			put = map[string][]byte{}
		}
		put[CertFile], put[KeyFile] = certPEM, keyPEM
		ok, err := s.Put(ctx, put, version)
		if err != nil {
			return nil, false, fmt.Errorf("create ca in %s: %w", s, err)
		}
		if ok {
			a, err := newAuthority(certDER, signer, o)
			return a, true, err
		}
		// Another agent stored its CA first: load that one.
	}
	return nil, false, fmt.Errorf("create ca in %s: %w", s, errStoreUnsettled)
}

var errStoreUnsettled = errors.New("it changed under every attempt without holding a CA")

// parseShared is the CA of the PEM files cert and key read from s.
func parseShared(s SharedStore, cert, key []byte, o Options) (*Authority, error) {
	where := s.String()
	certDER, err := parseCertPEM(cert, where+" "+CertFile)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	signer, err := parseKeyPEM(key, where+" "+KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	a, err := newAuthority(certDER, signer, o)
	if err != nil {
		return nil, fmt.Errorf("load ca from %s: %w", where, err)
	}
	return a, nil
}
