package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --admin-host puts the admin API on the node's address and keeps
// admin.listen's port: the DaemonSet passes status.hostIP, IPv4 or IPv6.
func TestAdminOnHost(t *testing.T) {
	for _, tc := range []struct {
		listen, host, want, err string
	}{
		{"127.0.0.1:9090", "10.0.3.7", "10.0.3.7:9090", ""},
		{"127.0.0.1:9090", "fd00::7", "[fd00::7]:9090", ""},
		{"[::1]:9464", "192.0.2.1", "192.0.2.1:9464", ""},
		{"127.0.0.1:9090", "::ffff:10.0.0.1", "10.0.0.1:9090", ""},
		{"127.0.0.1:9090", "$(HOST_IP)", "", `--admin-host "$(HOST_IP)": not an IP address`},
		{"localhost:9090", "10.0.0.1", "", `admin.listen "localhost:9090" is not ip:port`},
	} {
		got, err := adminOnHost(tc.listen, tc.host)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("adminOnHost(%q, %q) = %q, %v; want %q", tc.listen, tc.host, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("adminOnHost(%q, %q) error %v; want one containing %q", tc.listen, tc.host, err, tc.err)
		}
	}
}

// A bad --admin-host is a usage error before the agent touches the node.
func TestAgentAdminHostFlag(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("admin:\n  listen: 127.0.0.1:9090\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCmd(t, "agent", "--config", cfg, "--admin-host", "node-1")
	if code != 2 || !strings.Contains(errs, `sluice agent: --admin-host "node-1": not an IP address`) {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}
