package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// `sluice run --config` refuses, before it touches the node, every key
// that only a node agent or sluice proxy uses, each with the key and the
// fix; --help says which sections apply.
func TestRunConfigKeys(t *testing.T) {
	tests := []struct {
		name   string
		yml    string
		args   []string
		code   int
		stderr []string
	}{
		{"agent.cgroups", "agent:\n  cgroups: [\"/kubepods.slice/**\"]\n", nil, 2,
			[]string{"sluice run: config agent.cgroups: sluice run selects its own transient cgroup; remove this key"}},
		{"several at once", "agent:\n  failMode: closed\nadmin:\n  listen: 127.0.0.1:9999\n", nil, 2,
			[]string{"config agent.failMode: sluice run's hooks always end with the run (open); remove this key", "config admin.listen: sluice run serves the admin API only when asked with --metrics ADDR"}},
		{"audit.file stdout", "audit:\n  file: stdout\n", nil, 2,
			[]string{`config audit.file "stdout": sluice run's stdout is the command's; use a path, none, or --audit-log FILE`}},
		{"--metrics on every address", "", []string{"--metrics", "0.0.0.0:9464", "--", "true"}, 2,
			[]string{`sluice run: --metrics: admin.listen "0.0.0.0:9464": an unspecified address listens on every address`}},
		{"--metrics not ip:port", "", []string{"--metrics", "localhost:9464", "--", "true"}, 2,
			[]string{`sluice run: --metrics: admin.listen "localhost:9464": must be ip:port`}},
		{"help names the sections that apply", "", []string{"--help"}, 0,
			[]string{"policyFile and the ca, audit, proxy and agent sections apply", "agent.cgroups, agent.failMode, agent.attach, admin.listen, proxy.listen) are refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.yml), 0o600); err != nil {
				t.Fatal(err)
			}
			args := tt.args
			if args == nil {
				args = []string{"--config", path, "--", "true"}
			}
			var out, errb bytes.Buffer
			code := dispatch(context.Background(), append([]string{"run"}, args...), &out, &errb)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstderr: %s", code, tt.code, errb.String())
			}
			// flag wraps long usage lines: compare with spaces folded.
			got := strings.Join(strings.Fields(errb.String()), " ")
			for _, w := range tt.stderr {
				if !strings.Contains(got, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
		})
	}
}

// The command sluice run starts does not inherit the variables the
// policy's credentials are read from.
func TestWithoutVars(t *testing.T) {
	env := []string{"PATH=/bin", "OPENAI_API_KEY=sk-x", "HOME=/root", "OPENAI_API_KEY_OLD=y"}
	got := withoutVars(env, []string{"OPENAI_API_KEY"})
	want := []string{"PATH=/bin", "HOME=/root", "OPENAI_API_KEY_OLD=y"}
	if !slices.Equal(got, want) {
		t.Fatalf("withoutVars = %q, want %q", got, want)
	}
	if got := withoutVars(env, nil); !slices.Equal(got, env) {
		t.Fatalf("withoutVars with nothing to drop = %q", got)
	}
}
