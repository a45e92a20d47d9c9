package config

import (
	"strings"
	"testing"
)

// FuzzParse: no input makes the strict config decoder panic, and whatever
// it accepts validates.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"policyFile: /etc/sluice/policy.yaml\n",
		"proxy:\n  dialTimeout: 5s\n  maxHeaderBytes: 65536\n",
		"agent:\n  cgroups: [\"/kubepods/**\"]\n  ports: [\"all\"]\n  failMode: open\n",
		"audit:\n  capture: {dir: /tmp/pcap, maxBytes: 10MB}\n",
		"agent: {interceptIPv4: 169.254.77.77, denyCIDRs: [10.0.0.0/8]}\n",
		"unknown: 1\n",
		"proxy: {dialTimeout: 5}\n",
		"ca: {secret: sluice-system/sluice-ca}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Default()
		if err := Parse(b, &c); err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a config that does not validate: %v", err)
			}
		}
	})
}

// FuzzSplitSecret: what SplitSecret accepts is a namespace and a name
// Kubernetes would accept, and they join back into the input.
func FuzzSplitSecret(f *testing.F) {
	for _, s := range []string{"sluice-system/sluice-ca", "a/b.c", "/x", "x/", "A/b", "a/b/c", "a/-b", "a/b..c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ns, name, err := SplitSecret(v)
		if err != nil {
			return
		}
		if ns+"/"+name != v {
			t.Fatalf("SplitSecret(%q) = %q, %q", v, ns, name)
		}
		if len(ns) > 63 || len(name) > 253 || strings.ContainsFunc(ns+name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.')
		}) || strings.Contains(ns, ".") || strings.Contains(name, "..") {
			t.Fatalf("SplitSecret(%q) accepted %q, %q", v, ns, name)
		}
	})
}
