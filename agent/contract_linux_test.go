package agent

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/sluicehq/sluice/bpf"
)

// btfEnum returns the values of enum name in sluice.c, read from the BTF
// of the compiled object (no privileges needed).
func btfEnum(t *testing.T, name string) map[string]uint64 {
	t.Helper()
	spec, err := bpf.LoadSluice()
	if err != nil {
		t.Fatalf("load bpf spec: %v", err)
	}
	var e *btf.Enum
	if err := spec.Types.TypeByName(name, &e); err != nil {
		t.Fatalf("find enum %s in BTF: %v", name, err)
	}
	out := map[string]uint64{}
	for _, v := range e.Values {
		out[v.Name] = v.Value
	}
	return out
}

// Every reason and verdict the kernel can emit has its public string, and
// every string maps from a value the kernel has: sluice.c cannot gain or
// renumber one without this test noticing.
func TestReasonsCoverBTF(t *testing.T) {
	for name, v := range btfEnum(t, "reason") {
		if name == "REASON_NONE" {
			continue // never emitted
		}
		if v >= uint64(len(reasons)) || reasons[v] == "" {
			t.Errorf("enum reason %s = %d has no agent reason string", name, v)
		}
	}
	vals := btfEnum(t, "reason")
	for r, s := range reasons {
		if s != "" && !hasValue(vals, uint64(r)) {
			t.Errorf("reason %q maps from %d, not a value of enum reason", s, r)
		}
	}
	for name, v := range btfEnum(t, "verdict") {
		if v >= uint64(len(verdicts)) || verdicts[v] == "" {
			t.Errorf("enum verdict %s = %d has no agent Verdict", name, v)
		}
	}
}

// Every failed-update site the kernel counts has a name for the metric.
func TestMapErrorSitesCoverBTF(t *testing.T) {
	vals := btfEnum(t, "map_error_site")
	n := vals["MAP_ERR_SITES"]
	if n == 0 {
		t.Fatal("enum map_error_site has no MAP_ERR_SITES")
	}
	for name, v := range vals {
		if name == "MAP_ERR_SITES" {
			continue // the count, not a site
		}
		if v >= n {
			t.Errorf("enum map_error_site %s = %d is past MAP_ERR_SITES = %d", name, v, n)
		}
		if mapErrorSites[bpf.SluiceMapErrorSite(v)] == "" {
			t.Errorf("enum map_error_site %s = %d has no name in mapErrorSites", name, v)
		}
	}
	if len(mapErrorSites) != int(n) {
		t.Errorf("mapErrorSites has %d names, sluice.c %d sites", len(mapErrorSites), n)
	}
	// Without loaded programs (the zero Agent, or after Close) every site
	// reads zero.
	got := (&Agent{}).MapErrors()
	if len(got) != int(n) || got["sluice_origins"] != 0 || got["sluice_peers"] != 0 {
		t.Errorf("MapErrors of an agent without programs = %v", got)
	}
}

func hasValue(m map[string]uint64, v uint64) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}
