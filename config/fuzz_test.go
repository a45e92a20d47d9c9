package config

import "testing"

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
