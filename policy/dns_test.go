package policy

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// dns rules decide names per workload, first match wins, and a name no
// rule matches is allowed.
func TestDecideName(t *testing.T) {
	e, err := Parse([]byte(`version: 1
dns:
  - name: agents-no-paste
    workloads: {comm: [agent]}
    names: ["*.paste.example", "paste.example"]
    action: deny
  - name: watch-tunnels
    names: ["*.tunnel.example"]
    action: deny
    mode: audit
  - name: everyone-else-internal
    names: ["internal.example"]
    action: allow
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	agent := &workload.Identity{Comm: "agent"}
	other := &workload.Identity{Comm: "curl"}
	tests := []struct {
		id        *workload.Identity
		name      string
		verdict   Verdict
		wouldDeny bool
		rule      string
	}{
		{agent, "x.paste.example.", Deny, false, "agents-no-paste"},
		{agent, "PASTE.example", Deny, false, "agents-no-paste"},
		{other, "x.paste.example", Allow, false, RuleDefault},
		{other, "a.tunnel.example", Allow, true, "watch-tunnels"},
		{other, "internal.example", Allow, false, "everyone-else-internal"},
		{agent, "api.example", Allow, false, RuleDefault},
	}
	for _, tt := range tests {
		d := e.DecideName(tt.id, tt.name)
		if d.Verdict != tt.verdict || d.WouldDeny != tt.wouldDeny || d.Rule != tt.rule {
			t.Errorf("%s looks up %s: %+v, want %v would_deny=%v rule %s", tt.id.Comm, tt.name, d, tt.verdict, tt.wouldDeny, tt.rule)
		}
	}
}

// Every problem of the dns section is reported at once, with its path.
func TestDNSRuleProblems(t *testing.T) {
	_, err := Parse([]byte(`version: 1
dns:
  - name: a
    names: ["*foo.example"]
    action: block
  - name: a
    action: deny
  - names: ["x.example"]
    action: allow
    mode: loud
`), "p.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`dns[0].names[0] "*foo.example"`, `dns[0].action "block"`, `dns[1].name "a": duplicate of dns[0].name`,
		`dns[1].names: missing`, `dns[2].name: missing`, `dns[2].mode "loud"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}
