package policy

import (
	"slices"
	"testing"
)

// Check warns, with the line and what to use instead, about selectors that
// are valid but do not select what they seem to: a process name alone
// (any process can take it) and Kubernetes metadata nothing fills yet.
func TestCheckWarnings(t *testing.T) {
	const comm = "warning: a process sets its own comm (prctl PR_SET_NAME, or the name of the file it runs), so comm alone does not identify a workload; add exe (e.g. /usr/bin/python3*), cgroups or containerIDs to this rule's workloads"
	tests := []struct {
		name      string
		workloads string // the YAML of rules[0].workloads
		want      []string
	}{
		{"comm alone", "{comm: [python3]}", []string{"p.yaml:4: rules[0].workloads.comm: " + comm}},
		{"comm with a namespace", "{comm: [python3], namespaces: [prod]}", nil},
		{"namespaces, labels, containers, images select (no warning)", "{namespaces: [team-*], labels: {app: api}, containers: [api], images: ['registry.example.com/team/*']}", nil},
		{"comm and exe", "{comm: [python3], exe: [/usr/bin/python3*]}", nil},
		{"comm and cgroups", "{comm: [python3], cgroups: [/kubepods.slice/**]}", nil},
		{"comm and containerIDs", "{comm: [python3], containerIDs: [0123456789ab]}", nil},
		{"exe alone", "{exe: [/usr/bin/python3*]}", nil},
		{"no workloads", "{}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "version: 1\nrules:\n  - name: r\n    workloads: " + tt.workloads + "\n    action: allow\n"
			warns, err := Check([]byte(src), "p.yaml")
			if err != nil {
				t.Fatalf("a warning is not an error: %v", err)
			}
			var got []string
			for _, w := range warns {
				got = append(got, w.Error())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("warnings:\n%q\nwant:\n%q", got, tt.want)
			}
		})
	}
}

// faultTolerant with local counters is accepted, as Kong accepts it, with
// a warning: local counters are never unavailable.
func TestCheckFaultTolerantLocal(t *testing.T) {
	const warn = "warning: has no effect with policy: local (local counters cannot be unavailable); remove it, or use policy: redis"
	tests := []struct {
		name      string
		rateLimit string // the YAML of rules[0].rateLimit
		want      []string
	}{
		{"local, faultTolerant true", "{minute: 5, policy: local, faultTolerant: true}", []string{"p.yaml:4: rules[0].rateLimit.faultTolerant: " + warn}},
		{"local by default, faultTolerant false", "{minute: 5, faultTolerant: false}", []string{"p.yaml:4: rules[0].rateLimit.faultTolerant: " + warn}},
		{"local without faultTolerant", "{minute: 5, policy: local}", nil},
		{"redis with faultTolerant", "{minute: 5, policy: redis, redis: {addr: '127.0.0.1:6379'}, faultTolerant: false}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "version: 1\nrules:\n  - name: r\n    rateLimit: " + tt.rateLimit + "\n    action: allow\n"
			warns, err := Check([]byte(src), "p.yaml")
			if err != nil {
				t.Fatalf("a warning is not an error: %v", err)
			}
			var got []string
			for _, w := range warns {
				got = append(got, w.Error())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("warnings:\n%q\nwant:\n%q", got, tt.want)
			}
			if _, err := Parse([]byte(src), "p.yaml"); err != nil {
				t.Errorf("the policy loads: %v", err)
			}
		})
	}
}
