package policy

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestDecodeProblems(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // every problem, in order
	}{
		{"empty", "", []string{`p.yaml: empty policy file: start it with "version: 1"`}},
		{"syntax", "version: 1\nrules: [\n", []string{`p.yaml:2: did not find expected node content`}},
		{"missing version", "mode: audit\n", []string{`p.yaml:1: version: missing: put "version: 1" at the top`}},
		{"wrong version", "version: 2\n", []string{`p.yaml:1: version 2: only version 1 exists, use "version: 1"`}},
		{"unknown key with hint", "version: 1\nrulez: []\n", []string{`p.yaml:2: rulez: unknown key in the top level: did you mean "rules"? known keys are version, mode, tls, ssrf, defaults, rules, mcp, dns, credentials, upstreams, resolution`}},
		{"unknown nested key", "version: 1\nrules:\n  - name: a\n    action: allow\n    destinations:\n      host: [x.com]\n", []string{
			`p.yaml:6: rules[0].destinations.host: unknown key in rules[0].destinations: did you mean "hosts"? known keys are hosts, ports, methods, paths, cidrs`}},
		{"wrong kind list", "version: 1\ntls: {passthrough: x.com}\n", []string{`p.yaml:2: tls.passthrough "x.com": must be a list, e.g. ["x.com"]`}},
		{"wrong kind map", "version: 1\nrules: [x]\n", []string{`p.yaml:2: rules[0]: must be a mapping of keys (name, workloads, destinations, action, mode, rateLimit, limits, capture, mcp, cache, content, headers, logBodies, captureSecrets), not a single value`}},
		{"not a number", "version: one\n", []string{`p.yaml:1: version "one": must be a whole number`}},
		{"not a bool", "version: 1\ndefaults: {rateLimit: {minute: 1, hideClientHeaders: maybe}}\n", []string{`p.yaml:2: defaults.rateLimit.hideClientHeaders "maybe": must be true or false`}},
		{"duplicate key", "version: 1\nmode: audit\nmode: enforce\n", []string{`p.yaml:3: mode: duplicate key, keep one`}},
		{"second document", "version: 1\n---\nversion: 1\n", []string{`p.yaml:2: a second YAML document: a policy file holds one document, remove the "---"`}},
		{"wildcard", `version: 1
rules:
  - name: r
    action: allow
    destinations:
      hosts:
        - ok.example
        - "*foo.com"
`, []string{`p.yaml:8: rules[0].destinations.hosts[1] "*foo.com": a wildcard must be a whole label, use "*.foo.com"`}},
		{"many at once", `version: 1
mode: strict
rules:
  - action: allow
    limits: {requestBody: 0}
    destinations: {ports: [8080]}
  - name: b
    action: deny
    destinations:
      ports: [0]
      methods: [get]
      cidrs: [10.0.0.1/8]
  - name: b
    action: allow
    rateLimit:
      minute: 5
      policy: redis
      faultTolerant: false
`, []string{
			`p.yaml:2: mode "strict": use enforce or audit`,
			`p.yaml:4: rules[0].name: missing: every rule needs a unique name, e.g. name: allow-github`,
			`p.yaml:5: rules[0].limits.requestBody "0": a limit of zero bytes: remove the key for no limit`,
			`p.yaml:10: rules[1].destinations.ports[0] 0: a port is between 1 and 65535`,
			`p.yaml:11: rules[1].destinations.methods[0] "get": methods are upper case, use "GET"`,
			`p.yaml:12: rules[1].destinations.cidrs[0] "10.0.0.1/8": has bits set after the prefix length, use "10.0.0.0/8"`,
			`p.yaml:13: rules[2].name "b": duplicate of rules[1].name, names must be unique`,
			`p.yaml:15: rules[2].rateLimit.redis.addr: missing: policy: redis needs redis.addr, e.g. 127.0.0.1:6379`,
		}},
		{"unknown key does not hide other problems", "version: 1\nmodee: x\nrules: [{name: a, action: allwo}]\n", []string{
			`p.yaml:2: modee: unknown key in the top level: did you mean "mode"? known keys are version, mode, tls, ssrf, defaults, rules, mcp, dns, credentials, upstreams, resolution`,
			`p.yaml:3: rules[0].action "allwo": use allow or deny`,
		}},
		{"shadowed rule", "version: 1\nrules:\n- {name: all, action: allow}\n- {name: never, action: deny, destinations: {hosts: [x.example]}}\n", []string{
			`p.yaml:4: rules[1]: never used: rules[0] matches every request first; move this rule above it`,
		}},
		{"reserved name", "version: 1\nrules: [{name: default, action: allow}]\n", []string{`p.yaml:2: rules[0].name "default": "default" is reserved for built-in decisions, choose another name`}},
		{"host forms", "version: 1\nrules: [{name: a, action: allow, destinations: {hosts: ['https://x.com/a', 'x.com:443', 'a.*.com', '', 'x.com/a']}}]\n", []string{
			`p.yaml:2: rules[0].destinations.hosts[0] "https://x.com/a": a host, not a URL: use "x.com"`,
			`p.yaml:2: rules[0].destinations.hosts[1] "x.com:443": a host has no port: use "x.com" and put 443 in destinations.ports`,
			`p.yaml:2: rules[0].destinations.hosts[2] "a.*.com": a wildcard is allowed only as the whole first label, e.g. "*.example.com"`,
			`p.yaml:2: rules[0].destinations.hosts[3]: empty host, remove it or write a name like api.example.com`,
			`p.yaml:2: rules[0].destinations.hosts[4] "x.com/a": a host has no path: put paths in destinations.paths`,
		}},
		{"rate limit checks", "version: 1\ndefaults:\n  rateLimit: {by: host, policy: cluster, burst: -1, redis: {addr: x}}\n", []string{
			`p.yaml:3: defaults.rateLimit: sets no limit: give at least one of second, minute, hour, day, e.g. minute: 60`,
			`p.yaml:3: defaults.rateLimit.burst -1: burst is a positive number of requests; remove it to use the shortest window's limit`,
			`p.yaml:3: defaults.rateLimit.by "host": use workload, destination or both`,
			`p.yaml:3: defaults.rateLimit.policy "cluster": use local or redis`,
		}},
		{"deny rule limits", "version: 1\nrules: [{name: a, action: deny, limits: {requestBody: 1MB}, rateLimit: {minute: 1}}]\n", []string{
			`p.yaml:2: rules[0].rateLimit: a deny rule forwards nothing to limit: move rateLimit to an allow rule`,
			`p.yaml:2: rules[0].limits: a deny rule forwards nothing to limit: move limits to an allow rule`,
		}},
		{"workloads", "version: 1\nrules:\n- name: a\n  action: allow\n  workloads:\n    cgroups: [kubepods, '/a/b**']\n    comm: [averyveryverylongname]\n    exe: [python3]\n    containerIDs: [XYZ]\n    namespaces: [Bad_NS]\n", []string{
			`p.yaml:6: rules[0].workloads.cgroups[0] "kubepods": a cgroup path starts with /, use "/kubepods"`,
			`p.yaml:6: rules[0].workloads.cgroups[1] "/a/b**": bad glob: use * within one segment and ** as a whole segment, e.g. /kubepods/**`,
			`p.yaml:7: rules[0].workloads.comm[0] "averyveryverylongname": the kernel keeps at most 15 bytes of a process name, use "averyveryverylo" (or match the full path with exe)`,
			`p.yaml:8: rules[0].workloads.exe[0] "python3": an executable is an absolute path, e.g. /usr/bin/python3`,
			`p.yaml:9: rules[0].workloads.containerIDs[0] "XYZ": a container id is 12 to 64 lower-case hex digits`,
			`p.yaml:10: rules[0].workloads.namespaces[0] "Bad_NS": not a Kubernetes namespace name (lower-case letters, digits and '-', with * and ? as globs), e.g. team-*`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Decode([]byte(tt.src), "p.yaml")
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if p != nil {
				t.Fatal("a policy returned with problems")
			}
			var got []string
			for _, pr := range Problems(err) {
				got = append(got, pr.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if err.Error() != strings.Join(tt.want, "\n") {
				t.Fatalf("Error() = %q", err.Error())
			}
			if _, err := Parse([]byte(tt.src), "p.yaml"); err == nil {
				t.Fatal("Parse accepted what Decode refused")
			}
		})
	}
}

func TestDecodeAliasBomb(t *testing.T) {
	src := "version: 1\nrules:\n - &r {name: a, action: allow, destinations: {hosts: [" + strings.Repeat("x.com,", 1000) + "]}}\n" + strings.Repeat(" - *r\n", 1000)
	_, err := Decode([]byte(src), "p.yaml")
	if err == nil || !strings.Contains(err.Error(), "the document expands to too many values (anchors and aliases?): write it out plainly") {
		t.Fatalf("got %v", err)
	}
}

func TestDecodeGood(t *testing.T) {
	for _, f := range []string{"default.yaml", "testdata/example.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(b, f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	// Anchors, null sections and flow style are fine.
	src := "version: 1\ntls:\nssrf: ~\ndefaults: &d {action: allow}\nrules:\n- &r {name: a, action: allow, limits: {requestBody: 512}}\n"
	if _, err := Parse([]byte(src), "p.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		err  string
	}{
		{"512", 512, ""},
		{"512B", 512, ""},
		{"64KB", 64000, ""},
		{"64kB", 64000, ""},
		{"10MB", 10_000_000, ""},
		{"10 MB", 10_000_000, ""},
		{"1GB", 1_000_000_000, ""},
		{"2TB", 2_000_000_000_000, ""},
		{"1KiB", 1024, ""},
		{"10MiB", 10 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"1TiB", 1 << 40, ""},
		{"0", 0, "a limit of zero bytes: remove the key for no limit"},
		{"10m", 0, `unknown unit "m": use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "10MB"`},
		{"MB", 0, `a size is a whole number with a unit, e.g. "10MB" or "512KiB"`},
		{"-1", 0, `a size is a whole number with a unit, e.g. "10MB" or "512KiB"`},
		{"1.5MB", 0, `unknown unit ".5MB": use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "1MB"`},
		{"99999999999TiB", 0, "too large, at most 8EiB"},
		{"99999999999999999999", 0, "too large, at most 8EiB"},
	} {
		got, err := ParseSize(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("%q: err %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir + "/missing.yaml"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	f := dir + "/p.yaml"
	os.WriteFile(f, []byte("version: 1\nmode: nope\n"), 0o644)
	_, err := Load(f)
	if err == nil || err.Error() != f+`:2: mode "nope": use enforce or audit` {
		t.Fatalf("got %v", err)
	}
	e, err := LoadWith("", Options{})
	if err != nil || e == nil {
		t.Fatalf("empty path must load the default policy: %v", err)
	}
}
