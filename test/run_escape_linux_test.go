package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sluicehq/sluice/cgroup2"
)

// droppedCaps are the capabilities `sluice run` takes from its command by
// default (launch.DroppedCaps), by number (linux/capability.h).
var droppedCaps = map[string]uint{
	"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_BPF": 39,
	"CAP_SYS_PTRACE": 19, "CAP_SYS_MODULE": 16,
}

// escapeScript is what a root command that wants to go direct tries: put
// itself into the root cgroup, by the cgroup2 mount path it sees and by
// the host's own mount namespace (through /proc/1/root and sluice's
// /proc/PPID/root), and mount cgroup2 anew to find a writable one. Then it
// reports its capability bounding set and its cgroup, and connects to the
// API. Each attempt prints "NAME: escaped" or "NAME: refused"; with
// ATTEMPT=0 it only reports.
const escapeScript = `
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name: escaped"; else echo "$name: refused"; fi; }
[ "$ATTEMPT" = 1 ] && {
try own-view sh -c "echo $$ > $MNT/cgroup.procs"
try host-via-init sh -c "echo $$ > /proc/1/root$MNT/cgroup.procs"
try host-via-sluice sh -c "echo $$ > /proc/$PPID/root$MNT/cgroup.procs"
try mount-cgroup2 mount -t cgroup2 cgroup2 "$MNTDIR"
}
grep '^CapBnd:' /proc/self/status
echo "cgroup: $(grep '^0::' /proc/self/cgroup)"
curl -sS -o /dev/null -w 'status=%{http_code}\n' --resolve "api.test:443:$API" https://api.test/v1/after-escape
`

// escapeResult is what escapeScript printed, by its "key: value" lines.
type escapeResult map[string]string

// runEscape runs escapeScript (its attempts only when attempt is set) as
// the command of `sluice run flags…` and returns its "key: value" lines,
// its whole output and sluice's stderr. The mount attempt targets a
// directory of the test's own, unmounted afterwards should it succeed.
func runEscape(t *testing.T, e *runEnv, curl string, attempt bool, flags ...string) (res escapeResult, out, errOut string) {
	t.Helper()
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	mntDir := t.TempDir()
	t.Cleanup(func() {
		// Only if the attempt succeeded outside a private mount namespace.
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mntDir+" ") {
			_ = syscall.Unmount(mntDir, syscall.MNT_DETACH)
		}
	})
	curlDir := filepath.Dir(curl)
	script := fmt.Sprintf("MNT=%s MNTDIR=%s API=%s ATTEMPT=%d PATH=%s:$PATH\n%s", mount, mntDir, e.api.IP4, map[bool]int{true: 1}[attempt], curlDir, escapeScript)
	code, out, errOut := e.runFlags(t, flags, "sh", "-c", script)
	if code != 0 {
		t.Fatalf("command exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	res = escapeResult{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			res[k] = strings.TrimSpace(v)
		}
	}
	return res, out, errOut
}

// capBnd parses a CapBnd value (hex).
func capBnd(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		t.Fatalf("CapBnd %q: %v", s, err)
	}
	return v
}

// A root command under `sluice run` stays in its cgroup: every way it
// tries to move itself to the root cgroup, and a fresh cgroup2 mount, is
// refused; it sees its own cgroup as the root ("0::/", the cgroup
// namespace); the capabilities that would let it around the hooks are not
// in its bounding set; and its connect after the attempts is intercepted
// (the audit record and the summary name it, in the run's cgroup).
func TestRunCommandCannotLeaveItsCgroup(t *testing.T) {
	RequireE2E(t) // before the root check: without the gate, a skip
	curl := RequireTool(t, "curl")
	RequireTool(t, "mount")
	if os.Geteuid() != 0 {
		t.Fatal("the escape is tried as root: run the e2e suite as root")
	}
	e := newRunEnv(t)
	res, out, errOut := runEscape(t, e, curl, true)

	for _, attempt := range []string{"own-view", "host-via-init", "host-via-sluice", "mount-cgroup2"} {
		if res[attempt] != "refused" {
			t.Errorf("%s: %q, want refused", attempt, res[attempt])
		}
	}
	if res["cgroup"] != "0::/" {
		t.Errorf("the command's cgroup is %q, want 0::/ (the run's cgroup as its namespace root)", res["cgroup"])
	}
	bnd := capBnd(t, res["CapBnd"])
	for name, n := range droppedCaps {
		if bnd&(1<<n) != 0 {
			t.Errorf("%s is in the command's bounding set %x", name, bnd)
		}
	}
	if !strings.Contains(out, "status=200\n") {
		t.Errorf("curl after the attempts did not get 200:\n%s\n%s", out, errOut)
	}
	rec := httpRecord(e.records(t), "/v1/after-escape")
	if rec == nil {
		t.Fatalf("no audit record for the connect after the attempts:\n%s", errOut)
	}
	if cg, _ := rec["cgroup"].(string); !strings.Contains(cg, "sluice-run-") || rec["comm"] != "curl" {
		t.Errorf("record cgroup %q comm %v: want the run's cgroup and curl", cg, rec["comm"])
	}
	if !strings.Contains(errOut, "egress summary") || !strings.Contains(errOut, "api.test") {
		t.Errorf("summary does not name api.test:\n%s", errOut)
	}
	if strings.Contains(errOut, "command protection not in place") {
		t.Errorf("sluice run reports a missing protection:\n%s", errOut)
	}
}

// With --keep-caps the command keeps every capability sluice has (the
// documented risk: no escape is tried, as it could succeed), and is still
// started in its own cgroup namespace.
func TestRunKeepCaps(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireTool(t, "mount")
	e := newRunEnv(t)
	res, _, errOut := runEscape(t, e, curl, false, "--keep-caps")
	own, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var ownBnd uint64
	for _, l := range strings.Split(string(own), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			ownBnd = capBnd(t, strings.TrimSpace(v))
		}
	}
	bnd := capBnd(t, res["CapBnd"])
	for name, n := range droppedCaps {
		if ownBnd&(1<<n) != 0 && bnd&(1<<n) == 0 {
			t.Errorf("--keep-caps: %s dropped (bounding set %x, sluice's %x)", name, bnd, ownBnd)
		}
	}
	if res["cgroup"] != "0::/" {
		t.Errorf("the command's cgroup is %q, want 0::/", res["cgroup"])
	}
	if rec := httpRecord(e.records(t), "/v1/after-escape"); rec == nil {
		t.Errorf("no audit record for the connect:\n%s", errOut)
	}
}
