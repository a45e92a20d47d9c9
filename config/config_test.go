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
