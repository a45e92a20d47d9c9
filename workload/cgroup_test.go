package workload

import (
	"strings"
	"testing"
)

const (
	cid  = "3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e"
	puid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
)

func TestParseCgroupPath(t *testing.T) {
	us := strings.ReplaceAll(puid, "-", "_")
	tests := []struct {
		name, path, cid, pod string
	}{
		{"containerd systemd burstable", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/cri-containerd-" + cid + ".scope", cid, puid},
		{"containerd systemd guaranteed", "/kubepods.slice/kubepods-pod" + us + ".slice/cri-containerd-" + cid + ".scope", cid, puid},
		{"containerd systemd besteffort", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + cid + ".scope", cid, puid},
		{"containerd cgroupfs burstable", "/kubepods/burstable/pod" + puid + "/" + cid, cid, puid},
		{"containerd cgroupfs guaranteed", "/kubepods/pod" + puid + "/" + cid, cid, puid},
		{"crio systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/crio-" + cid + ".scope", cid, puid},
		{"crio conmon is not the container", "/kubepods.slice/kubepods-pod" + us + ".slice/crio-conmon-" + cid + ".scope", "", puid},
		{"docker systemd", "/system.slice/docker-" + cid + ".scope", cid, ""},
		{"docker cgroupfs", "/docker/" + cid, cid, ""},
		{"podman", "/machine.slice/libpod-" + cid + ".scope", cid, ""},
		{"sub-cgroup of a container", "/system.slice/docker-" + cid + ".scope/init.scope", cid, ""},
		{"pod slice only", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice", "", puid},
		{"qos slice only", "/kubepods.slice/kubepods-burstable.slice", "", ""},
		{"plain service", "/system.slice/sshd.service", "", ""},
		{"user session", "/user.slice/user-1000.slice/session-3.scope", "", ""},
		{"root", "/", "", ""},
		{"empty", "", "", ""},
		{"short id", "/docker/3f4e8c3b5d2a", "", ""},
		{"uppercase id", "/docker/" + strings.ToUpper(cid), "", ""},
		{"bad uuid", "/kubepods/podnot-a-uuid/" + cid, cid, ""},
		{"slice not under kubepods", "/foo-pod" + us + ".slice", "", ""},
		{"sluice run transient", "/sluice-run-1234", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p := ParseCgroupPath(tt.path)
			if c != tt.cid || p != tt.pod {
				t.Errorf("ParseCgroupPath(%q) = (%q, %q), want (%q, %q)", tt.path, c, p, tt.cid, tt.pod)
			}
		})
	}
}

func FuzzParseCgroupPath(f *testing.F) {
	f.Add("/kubepods/burstable/pod" + puid + "/" + cid)
	f.Add("/kubepods.slice/kubepods-pod" + strings.ReplaceAll(puid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope")
	f.Add("/docker/" + cid)
	f.Add("")
	f.Fuzz(func(t *testing.T, p string) {
		c, u := ParseCgroupPath(p)
		if c != "" && (len(c) != 64 || !strings.Contains(p, c)) {
			t.Fatalf("container id %q not a 64-hex substring of %q", c, p)
		}
		if u != "" && len(u) != 36 {
			t.Fatalf("pod uid %q: not a uuid", u)
		}
	})
}
