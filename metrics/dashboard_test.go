package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/metrics"
)

// everything feeds one of every input so that every metric has a sample.
func everything() *metrics.Metrics {
	m := metrics.New(metrics.Options{})
	for _, r := range []audit.Record{
		{Kind: audit.KindHTTP, Host: "a", Method: "GET", Status: 429, Source: "sluice", Decision: audit.DecisionDeny, Rule: "r", Reason: "x", BytesIn: 1, BytesOut: 1, UpstreamDuration: 1},
		{Kind: audit.KindHTTP, Host: "a", Method: "GET", Status: 502, Source: "sluice", Decision: audit.DecisionError, Reason: "upstream error"},
		{Kind: audit.KindHTTP, Host: "a", Method: "GET", Status: 200, Source: "sluice", Decision: audit.DecisionAllow, Cache: "hit"},
		{Kind: audit.KindL4, Host: "b", TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow},
		{Kind: audit.KindConnect, Decision: "redirected"},
		{Kind: audit.KindDNS, DNSName: "a", QType: "A", Rcode: "NXDOMAIN", Decision: audit.DecisionDeny, Rule: "r", Reason: audit.ReasonDNSDenied},
		{Kind: audit.KindDNS, DNSName: "a", QType: "A", Rcode: "NXDOMAIN", Decision: audit.DecisionDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilEntropy},
	} {
		m.Record(&r)
	}
	m.TLSConnection(audit.TLSDecrypted)
	m.ConnOpened()
	m.SetRingDrops(func() uint64 { return 1 })
	m.SetEgressDrops(func() uint64 { return 1 })
	m.SetInterceptRestorations(func() uint64 { return 1 })
	m.SetMapErrors(func() map[string]uint64 { return map[string]uint64{"sluice_origins": 1} })
	m.SetLeafStats(func() metrics.LeafStats { return metrics.LeafStats{Size: 1, Hits: 1, Misses: 1, Issued: 1} })
	m.SetUpstreamHealth(func() []metrics.UpstreamHealth {
		return []metrics.UpstreamHealth{{Group: "g", Target: "10.0.0.1:80", Healthy: true}}
	})
	return m
}

// registryNames are the series names a query can use.
func registryNames(t *testing.T, m *metrics.Metrics) map[string]bool {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
			continue
		}
		names[n] = true
	}
	return names
}

func TestDashboardUsesRealMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		SchemaVersion int `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want a current Grafana (>= 36)", dash.SchemaVersion)
	}
	hasDS := false
	for _, v := range dash.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			hasDS = true
		}
	}
	if !hasDS {
		t.Error("no Prometheus datasource variable")
	}

	have := registryNames(t, everything())
	nameRE := regexp.MustCompile(`\bsluice_[a-z0-9_]+`)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			ns := nameRE.FindAllString(tg.Expr, -1)
			if len(ns) == 0 {
				t.Errorf("panel %q: query uses no sluice metric: %s", p.Title, tg.Expr)
			}
			for _, n := range ns {
				used[n] = true
				if !have[n] {
					t.Errorf("panel %q uses %s, which the registry does not export", p.Title, n)
				}
			}
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			for _, n := range nameRE.FindAllString(q["query"].(string), -1) {
				if !have[n] {
					t.Errorf("variable %s uses %s, which the registry does not export", v.Name, n)
				}
			}
		}
	}
	// And the other way: every Sluice metric is on the dashboard.
	var missing []string
	for n := range have {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(n, "sluice_") && !used[n] && !used[base+"_bucket"] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics not on the dashboard: %v", missing)
	}
}
