package logsum

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// WriteText prints s as tables for people. Values that came from the log
// are quoted when they hold spaces or control characters, so a hostile
// Host header cannot draw on the terminal or break a column.
func WriteText(w io.Writer, s Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }

	p("Sluice audit log summary: %d records from %s\n", s.Records, inputsText(s.Inputs))
	if !s.First.IsZero() {
		p("Period: %s to %s (%s)\n", s.First.UTC().Format(time.RFC3339), s.Last.UTC().Format(time.RFC3339),
			s.Last.Sub(s.First).Round(time.Second))
	}
	p("Lines: %d  records: %d  other log lines: %d  unparseable: %d\n", s.Lines, s.Records, s.Skipped, s.Unparseable)
	for _, e := range s.UnparseableSamples {
		p("  unparseable %s:%d: %s\n", clean(e.File), e.Line, clean(e.Error))
	}
	if more := s.Unparseable - int64(len(s.UnparseableSamples)); more > 0 {
		p("  … and %d more unparseable lines\n", more)
	}
	for _, e := range s.ReadErrors {
		p("  read error: %s\n", clean(e))
	}

	p("\nTOTALS\n")
	p("  requests\t%d\n", s.Totals.Requests)
	p("  bytes in\t%d\n", s.Totals.BytesIn)
	p("  bytes out\t%d\n", s.Totals.BytesOut)
	p("  kinds\t%s\n", mapText(s.Totals.Kinds))
	p("  decisions\t%s\n", mapText(s.Totals.Decisions))

	section(p, "RATE-LIMIT VIOLATIONS (429 from sluice)", s.RateLimited, []string{"WORKLOAD", "HOST"},
		func(r Row) []string { return []string{r.Workload, r.Host} })
	section(p, "DENIALS BY RULE", s.Denials, []string{"RULE", "REASON"},
		func(r Row) []string { return []string{r.Rule, r.Reason} })
	section(p, "WOULD-DENY BY RULE (audit mode)", s.WouldDeny, []string{"RULE", "REASON"},
		func(r Row) []string { return []string{r.Rule, r.Reason} })
	section(p, "AUTH FAILURES (401/403 from upstream)", s.AuthFailures, []string{"WORKLOAD", "HOST", "STATUS"},
		func(r Row) []string { return []string{r.Workload, r.Host, strconv.Itoa(r.Status)} })
	section(p, "SERVER ERRORS (5xx from upstream)", s.ServerErrors, []string{"WORKLOAD", "HOST", "STATUS"},
		func(r Row) []string { return []string{r.Workload, r.Host, strconv.Itoa(r.Status)} })
	section(p, "DENIED DNS NAMES", s.DeniedNames, []string{"WORKLOAD", "NAME", "RULE"},
		func(r Row) []string { return []string{r.Workload, r.Host, r.Rule} })
	section(p, "DNS EXFILTRATION SUSPECTS (by domain)", s.ExfilSuspects, []string{"WORKLOAD", "DOMAIN", "REASON"},
		func(r Row) []string { return []string{r.Workload, r.Host, r.Reason} })
	section(p, "CLIENTS THAT REJECTED SLUICE'S CERTIFICATE (client_untrusted)", s.UntrustedClients, []string{"WORKLOAD", "HOST"},
		func(r Row) []string { return []string{r.Workload, r.Host} })
	talkers(p, "TOP WORKLOADS", "WORKLOAD", s.TopWorkloads)
	talkers(p, "TOP HOSTS", "HOST", s.TopHosts)
	mcpTools(p, s.MCPTools)
	return tw.Flush()
}

func mcpTools(p func(string, ...any), t MCPTools) {
	p("\nMCP TOOLS (tools/call by workload and server): %d\n", t.Distinct)
	if len(t.Rows) == 0 {
		p("  none\n")
		return
	}
	p("  WORKLOAD\tHOST\tTOOL\tCALLS\tDENIED\tWOULD_DENY\tERRORS\tCHANGES\n")
	for _, r := range t.Rows {
		p("  %s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", clean(r.Workload), clean(r.Host), clean(r.Tool), r.Calls, r.Denied, r.WouldDeny, r.Errors, r.Changes)
	}
	if more := t.Distinct - len(t.Rows); more > 0 {
		p("  … and %d more\n", more)
	}
}

func section(p func(string, ...any), title string, s Section, cols []string, vals func(Row) []string) {
	p("\n%s: %d\n", title, s.Total)
	if len(s.Rows) == 0 {
		p("  none\n")
		return
	}
	p("  %s\tCOUNT\n", strings.Join(cols, "\t"))
	for _, r := range s.Rows {
		v := vals(r)
		for i := range v {
			v[i] = clean(v[i])
			if v[i] == "" {
				v[i] = "-"
			}
		}
		p("  %s\t%d\n", strings.Join(v, "\t"), r.Count)
	}
	if more := s.Distinct - len(s.Rows); more > 0 {
		p("  … and %d more\n", more)
	}
}

func talkers(p func(string, ...any), title, col string, t Talkers) {
	p("\n%s\n", title)
	if len(t.Rows) == 0 {
		p("  none\n")
		return
	}
	named := slices.ContainsFunc(t.Rows, func(r Talker) bool { return r.Container != "" || r.Image != "" })
	if named { // the container runtime named some of them
		p("  %s\tREQUESTS\tBYTES IN\tBYTES OUT\tCONTAINER\tIMAGE\n", col)
	} else {
		p("  %s\tREQUESTS\tBYTES IN\tBYTES OUT\n", col)
	}
	for _, r := range t.Rows {
		if named {
			p("  %s\t%d\t%d\t%d\t%s\t%s\n", clean(r.Name), r.Requests, r.BytesIn, r.BytesOut, dash(clean(r.Container)), dash(clean(r.Image)))
			continue
		}
		p("  %s\t%d\t%d\t%d\n", clean(r.Name), r.Requests, r.BytesIn, r.BytesOut)
	}
	if more := t.Distinct - len(t.Rows); more > 0 {
		p("  … and %d more\n", more)
	}
}

func inputsText(in []string) string {
	switch len(in) {
	case 0:
		return "no input"
	case 1:
		return clean(in[0])
	default:
		return fmt.Sprintf("%d inputs", len(in))
	}
}

func mapText(m map[string]int64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", clean(k), m[k])
	}
	return strings.Join(parts, "  ")
}

// clean returns s as is when every rune is printable (U+0020 is, tabs and
// newlines are not), else quoted with Go escapes.
func clean(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return strconv.Quote(s)
		}
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
