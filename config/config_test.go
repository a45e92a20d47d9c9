package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Load records which keys the file wrote, values aside, so that a
// command can tell an explicit setting from a default.
func TestLoadKeysSet(t *testing.T) {
	tests := []struct {
		name string
		yml  string
		want []string
	}{
		{"empty file", "", []string{}},
		{"one agent key", "agent:\n  proxyPort: 16000\n", []string{"agent", "agent.proxyPort"}},
		{"a default value written out is still set", "agent:\n  proxyPort: 15001\n", []string{"agent", "agent.proxyPort"}},
		{"nested sections", "audit:\n  file: none\n  capture: {dir: /tmp/p}\n", []string{"audit", "audit.capture", "audit.capture.dir", "audit.file"}},
		{"lists are values", "agent:\n  cgroups: [\"/a/**\"]\npolicyFile: p.yaml\n", []string{"agent", "agent.cgroups", "policyFile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.yml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Set.Sorted(); !slices.Equal(got, tt.want) {
				t.Errorf("keys set %q, want %q", got, tt.want)
			}
		})
	}
	c, err := Load("")
	if err != nil || len(c.Set) != 0 {
		t.Errorf("no file: keys %v, err %v", c.Set, err)
	}
}

func TestProxyClientsAllowCIDRs(t *testing.T) {
	c := Default()
	err := Parse([]byte("proxy:\n  clients:\n    allowCIDRs: [127.0.0.1/32, 10.0.0.1]\n"), &c)
	if err == nil || !strings.Contains(err.Error(), `proxy.clients.allowCIDRs[1] "10.0.0.1": not a CIDR range`) {
		t.Fatalf("Parse: %v", err)
	}
}

func TestProcessGCHeadroom(t *testing.T) {
	if got := Default().Process.GCHeadroom; got != 0 {
		t.Errorf("default process.gcHeadroom = %d, want 0 (off: Go's own pacing)", got)
	}
	for _, tt := range []struct {
		yml, want string // want: "" for no error, else a part of the error
	}{
		{"process:\n  gcHeadroom: \"off\"\n", ""},
		{"process:\n  gcHeadroom: off\n", ""},
		{"process:\n  gcHeadroom: 128MiB\n", ""},
		{"process:\n  gcHeadroom: 1MB\n", `process.gcHeadroom 1000000B: must be off (Go's own pacing) or between 4MiB and 1TiB, e.g. 16MiB`},
		{"process:\n  gcHeadroom: 64\n", `process.gcHeadroom 64B: must be off`},
	} {
		c := Default()
		err := Parse([]byte(tt.yml), &c)
		if tt.want == "" && strings.Contains(tt.yml, "off") && c.Process.GCHeadroom != 0 {
			t.Errorf("Parse(%q): gcHeadroom %d, want 0", tt.yml, c.Process.GCHeadroom)
		}
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Parse(%q) = %v, want %q", tt.yml, err, tt.want)
		}
	}
}

// TestCASecret: ca.secret names a Secret as NAMESPACE/NAME, and replaces
// ca.dir rather than joining it.
func TestCASecret(t *testing.T) {
	for _, tt := range []struct {
		yml, want string // want: "" for no error, else a part of the error
	}{
		{"ca:\n  secret: sluice-system/sluice-ca\n", ""},
		{"ca:\n  secret: a/b.c-d\n", ""},
		{"ca:\n  secret: sluice-ca\n", `ca.secret "sluice-ca": want NAMESPACE/NAME`},
		{"ca:\n  secret: Sluice/ca\n", `ca.secret "Sluice/ca": want NAMESPACE/NAME`},
		{"ca:\n  secret: sluice-system/ca/x\n", `ca.secret "sluice-system/ca/x": want NAMESPACE/NAME`},
		{"ca:\n  secret: -ns/ca\n", `want NAMESPACE/NAME`},
		{"ca:\n  secret: ns/\n", `want NAMESPACE/NAME`},
		{"ca:\n  secret: ns/ca\n  dir: /var/lib/sluice/ca\n", `ca.secret "ns/ca" and ca.dir "/var/lib/sluice/ca" are both set: choose one`},
	} {
		c := Default()
		err := Parse([]byte(tt.yml), &c)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Parse(%q) = %v, want %q", tt.yml, err, tt.want)
		}
	}
	if ns, name, err := SplitSecret("sluice-system/sluice-ca"); ns != "sluice-system" || name != "sluice-ca" || err != nil {
		t.Errorf("SplitSecret = %q, %q, %v", ns, name, err)
	}
}
