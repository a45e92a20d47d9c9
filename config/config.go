// Package config loads the settings of the agent and of the standalone
// proxy from one YAML file. Decoding is strict: an unknown key is an error
// that names its line. The policy itself lives in its own file (see
// policy/), named here by PolicyFile, because it is reloaded on its own.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/headroom"
)

// Config is the whole file. Every section has defaults (see Default), so
// an empty file is a valid configuration.
type Config struct {
	// PolicyFile is the policy YAML; empty means the embedded default.
	PolicyFile string  `yaml:"policyFile"`
	CA         CA      `yaml:"ca"`
	Audit      Audit   `yaml:"audit"`
	Proxy      Proxy   `yaml:"proxy"`
	Agent      Agent   `yaml:"agent"`
	Admin      Admin   `yaml:"admin"`
	Process    Process `yaml:"process"`

	// Set holds the keys the file wrote, whatever their values (see
	// Keys); empty for the defaults. Load and Parse fill it, so a command
	// that treats an explicit key differently from its default (sluice
	// run) needs no second parse.
	Set Keys `yaml:"-"`
}

// Keys is a set of dotted key paths, e.g. "agent.proxyPort" or
// "audit.capture.file". A section whose keys are set is itself set
// ("audit.capture", "audit"); list items are not descended into.
type Keys map[string]bool

// Has reports whether the file wrote the key at path.
func (k Keys) Has(path string) bool { return k[path] }

// Sorted returns the paths in order.
func (k Keys) Sorted() []string {
	out := make([]string, 0, len(k))
	for p := range k {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// CA says where the certificate authority lives.
type CA struct {
	// Dir holds ca.crt and ca.key; created on first start.
	Dir string `yaml:"dir"`
	// Secret, "NAMESPACE/NAME", is a Kubernetes Secret that holds the CA
	// every node shares (keys ca.crt and ca.key), read through the API
	// with the pod's service account: the first agent to find it missing
	// or empty creates the CA in it. Set instead of Dir.
	Secret string `yaml:"secret"`
	// KeyType of a newly created CA: "ecdsa" (P-256, default) or "rsa" (2048).
	KeyType string `yaml:"keyType"`
	// LeafCacheSize bounds the minted-certificate cache.
	LeafCacheSize int `yaml:"leafCacheSize"`
}

// SplitSecret is ca.secret's namespace and name: "NAMESPACE/NAME", a
// DNS label and a DNS subdomain as Kubernetes names them.
func SplitSecret(v string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(v, "/")
	if !ok || !dnsLabel(namespace) || !dnsSubdomain(name) {
		return "", "", errors.New("want NAMESPACE/NAME in lowercase letters, digits and '-' (and '.' in the name), e.g. sluice-system/sluice-ca")
	}
	return namespace, name, nil
}

// dnsLabel: RFC 1123 label, as Kubernetes checks a namespace.
func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// dnsSubdomain: RFC 1123 subdomain, as Kubernetes checks a Secret's name.
func dnsSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel(l) {
			return false
		}
	}
	return true
}

// Audit says where audit records go.
type Audit struct {
	// File is a path, "stdout" (default, also for ""), or "none".
	File string `yaml:"file"`
	// AccessLog, when set, is a path for a second log in nginx's
	// "combined" format plus upstream address and times (see audit.CombinedLog).
	AccessLog string `yaml:"accessLog"`
	// FlushInterval, when set, holds the audit log's and the access log's
	// lines for up to this long (or 512 KiB) and writes them together: one
	// write per batch instead of one per record, at the price of that
	// delay before a line is in the file (and of those lines on a crash).
	// 0 writes every record at once.
	FlushInterval Duration `yaml:"flushInterval"`
	// RedactHeaders are extra header names whose values are never logged.
	RedactHeaders []string `yaml:"redactHeaders"`
	// LogHeaders records request headers (redacted) in each record.
	LogHeaders bool `yaml:"logHeaders"`
	// Capture writes the decrypted traffic of connections a policy rule
	// marks with capture: true as pcapng (see pcap/).
	Capture Capture `yaml:"capture"`
}

// Capture says where pcapng captures of decrypted traffic go. Both empty:
// no capture, whatever the policy says.
type Capture struct {
	// File is one pcapng file holding every captured flow.
	File string `yaml:"file"`
	// Dir holds one pcapng file per flow, named by workload and destination.
	Dir string `yaml:"dir"`
	// MaxBytes caps the file (or each file in Dir), e.g. "100MB".
	MaxBytes Size `yaml:"maxBytes"`
	// MaxFiles bounds the files in Dir.
	MaxFiles int `yaml:"maxFiles"`
}

// Admin is the listener for /metrics, /healthz, /readyz and the flows API.
type Admin struct {
	Listen string `yaml:"listen"`
}

// Process tunes the Go runtime of the process.
type Process struct {
	// GCHeadroom is how much the heap may grow between garbage
	// collections however little is live, up to 4 times what is (see
	// headroom, which also says why more is not cheaper); once more
	// than this is live, GOGC's own pacing applies. Off (0, the
	// default) leaves Go's pacing alone, as does GOGC=off in the
	// environment.
	GCHeadroom SizeOrOff `yaml:"gcHeadroom"`
}

// Default returns the configuration used when a key is absent.
func Default() Config {
	return Config{
		CA:      CA{Dir: "/var/lib/sluice/ca", KeyType: "ecdsa", LeafCacheSize: 10000},
		Audit:   Audit{File: "stdout", Capture: Capture{MaxBytes: 100 << 20, MaxFiles: 1000}},
		Proxy:   DefaultProxy(),
		Agent:   DefaultAgent(),
		Admin:   Admin{Listen: "127.0.0.1:9090"},
		Process: Process{},
	}
}

// Load reads path over the defaults. An empty path returns the defaults.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read config %s: %w", path, err)
	}
	if err := Parse(b, &c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes b strictly into c (whose values are the defaults),
// records the keys b sets in c.Set and validates the result.
func Parse(b []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, errEOF()) {
		return err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	c.Set = Keys{}
	if len(doc.Content) > 0 {
		collectKeys(c.Set, "", doc.Content[0])
	}
	return c.Validate()
}

// collectKeys adds the key paths of the mapping n (and of the mappings
// nested in it) under prefix.
func collectKeys(set Keys, prefix string, n *yaml.Node) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		p := n.Content[i].Value
		if prefix != "" {
			p = prefix + "." + p
		}
		set[p] = true
		collectKeys(set, p, n.Content[i+1])
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.CA.KeyType != "ecdsa" && c.CA.KeyType != "rsa" {
		errs = append(errs, fmt.Errorf("ca.keyType %q: must be \"ecdsa\" or \"rsa\"", c.CA.KeyType))
	}
	if c.CA.Secret != "" {
		if _, _, err := SplitSecret(c.CA.Secret); err != nil {
			errs = append(errs, fmt.Errorf("ca.secret %q: %w", c.CA.Secret, err))
		}
		if c.Set["ca.dir"] {
			errs = append(errs, fmt.Errorf("ca.secret %q and ca.dir %q are both set: choose one (secret: the CA every node shares; dir: this host's own)", c.CA.Secret, c.CA.Dir))
		}
	}
	if c.CA.LeafCacheSize < 1 {
		errs = append(errs, fmt.Errorf("ca.leafCacheSize %d: must be at least 1, e.g. 10000", c.CA.LeafCacheSize))
	}
	if c.Audit.Capture.File != "" && c.Audit.Capture.Dir != "" {
		errs = append(errs, fmt.Errorf("audit.capture: file %q and dir %q are both set: choose one", c.Audit.Capture.File, c.Audit.Capture.Dir))
	}
	if d := c.Audit.FlushInterval.D(); d < 0 || d > 10*time.Second {
		errs = append(errs, fmt.Errorf("audit.flushInterval %s: must be between 0 (every record written at once) and 10s, e.g. 50ms", d))
	}
	if h := c.Process.GCHeadroom; h != 0 && (h < headroom.Min || h > 1<<40) {
		errs = append(errs, fmt.Errorf("process.gcHeadroom %dB: must be off (Go's own pacing) or between 4MiB and 1TiB, e.g. 16MiB", h))
	}
	errs = append(errs, c.Proxy.validate()...)
	errs = append(errs, c.Agent.validate()...)
	return errors.Join(errs...)
}
