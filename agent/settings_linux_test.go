package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/config"
)

func TestCompileSettings(t *testing.T) {
	cfg := config.DefaultAgent()
	cfg.Ports = []string{"443", "8443"}
	s, ports, err := compileSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ports, []uint16{443, 8443}) || s.Flags&uint16(bpf.SluiceSettingFlagSET_ALL_PORTS) != 0 || s.Flags&uint16(bpf.SluiceSettingFlagSET_USE_SELECTION) != 0 {
		t.Errorf("ports %v flags %#x", ports, s.Flags)
	}
	if s.Mark != cfg.Mark || s.ProxyPort != 15001 {
		t.Errorf("settings %+v", s)
	}
	// The intercept addresses are not set here: only after they are
	// verified local.
	if s.Flags&uint16(bpf.SluiceSettingFlagSET_V4|bpf.SluiceSettingFlagSET_V6) != 0 || s.Intercept4 != 0 {
		t.Errorf("intercept set before verification: %+v", s)
	}

	cfg.Ports = []string{"all"}
	cfg.Attach = "root"
	s, _, err = compileSettings(cfg)
	if err != nil || s.Flags&uint16(bpf.SluiceSettingFlagSET_ALL_PORTS) == 0 || s.Flags&uint16(bpf.SluiceSettingFlagSET_USE_SELECTION) == 0 {
		t.Errorf("all ports, root attach: flags %#x, %v", s.Flags, err)
	}

	cfg.Ports = []string{"x", "70000"}
	cfg.InterceptIPv4 = netip.Addr{}
	cfg.FailMode = "sometimes"
	_, _, err = compileSettings(cfg)
	for _, w := range []string{`agent.ports[0] "x"`, `agent.ports[1] "70000"`, "agent.interceptIPv4", `agent.failMode "sometimes"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

func TestIsUnder(t *testing.T) {
	tests := []struct {
		p, anc string
		want   bool
	}{
		{"/a/b", "/a", true},
		{"/a", "/a", true},
		{"/ab", "/a", false},
		{"/a", "/", true},
		{"/", "/a", false},
	}
	for _, tt := range tests {
		if got := isUnder(tt.p, tt.anc); got != tt.want {
			t.Errorf("isUnder(%q, %q) = %v", tt.p, tt.anc, got)
		}
	}
	if got := relPath("/sys/fs/cgroup", "/sys/fs/cgroup"); got != "/" {
		t.Errorf("relPath of the mount = %q", got)
	}
	if got := relPath("/sys/fs/cgroup", "/sys/fs/cgroup/a/b"); got != "/a/b" {
		t.Errorf("relPath = %q", got)
	}
}

func TestCgroupNamesForget(t *testing.T) {
	c := newCgroupNames(t.TempDir())
	c.add(1, "/a")
	c.add(2, "/a/b")
	c.add(3, "/ab")
	c.forget("/a")
	if len(c.byID) != 1 || c.byID[3] != "/ab" {
		t.Errorf("after forget: %v", c.byID)
	}
}
