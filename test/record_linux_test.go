package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// A connect refused in the kernel never reaches the proxy, and still
// leaves an audit record naming the process and why.
func TestRunKernelDeniedConnectIsRecorded(t *testing.T) {
	e := newRunEnv(t)
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, fmt.Sprintf("agent:\n  denyCIDRs: [%s/32]\n", e.api.IP4)...)
	if err := os.WriteFile(e.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	curl := mustLookPath(t, "curl")
	code, _, errOut := e.run(t, curl, "-sS", "--resolve", "api.test:443:"+e.api.IP4.String(), "https://api.test/denied-in-kernel")
	if code != 7 { // curl: failed to connect
		t.Fatalf("curl exit %d; want 7, the connect refused in the kernel\n%s", code, errOut)
	}
	var rec map[string]any
	for _, r := range e.records(t) {
		if r["kind"] == "connect" {
			rec = r
		}
	}
	if rec == nil {
		t.Fatalf("no connect record in the audit log; stderr:\n%s", errOut)
	}
	if rec["decision"] != "deny" || rec["reason"] != "destination in agent.denyCIDRs" || rec["comm"] != "curl" ||
		rec["ip"] != e.api.IP4.String() || rec["port"] != float64(443) || !strings.HasPrefix(fmt.Sprint(rec["cgroup"]), "/") {
		t.Errorf("record %v", rec)
	}
}
