package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
)

func init() {
	register("flows", "live per-process egress from a running agent", runFlows)
}

func runFlows(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice flows", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agent := fs.String("agent", admin.DefaultListen, "the agent's admin listener, host:port or http://host:port")
	follow := fs.Bool("follow", false, "redraw the table every --interval until interrupted")
	asJSON := fs.Bool("json", false, "print the agent's JSON snapshot (one document per line with --follow)")
	interval := fs.Duration("interval", 2*time.Second, "redraw interval with --follow")
	count := fs.Int("count", 0, "with --follow, stop after this many redraws (0: until interrupted)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice flows [--agent ADDR] [--follow] [--interval 2s] [--json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice flows: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *interval < 100*time.Millisecond {
		fmt.Fprintf(stderr, "sluice flows: --interval %s: must be at least 100ms, e.g. 2s\n", *interval)
		return 2
	}
	url := adminBase(*agent) + admin.FlowsPath
	client := &http.Client{Timeout: 5 * time.Second}

	for n := 1; ; n++ {
		raw, snap, err := fetchFlows(ctx, client, url)
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			fmt.Fprintf(stderr, "sluice flows: %v\n", err)
			return 1
		}
		switch {
		case *asJSON:
			stdout.Write(raw)
			if len(raw) == 0 || raw[len(raw)-1] != '\n' {
				io.WriteString(stdout, "\n")
			}
		case *follow:
			// Home the cursor and clear the screen, then draw.
			io.WriteString(stdout, "\x1b[H\x1b[2J")
			fmt.Fprintf(stdout, "sluice flows from %s at %s (every %s, Ctrl-C to stop)\n\n", *agent, snap.Time.Format(time.TimeOnly), *interval)
			writeFlowsTable(stdout, snap)
		default:
			writeFlowsTable(stdout, snap)
		}
		if !*follow || (*count > 0 && n >= *count) {
			return 0
		}
		t := time.NewTimer(*interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0
		case <-t.C:
		}
	}
}

func fetchFlows(ctx context.Context, c *http.Client, url string) ([]byte, flows.Snapshot, error) {
	var snap flows.Snapshot
	raw, err := callAdmin(ctx, c, url, nil, &snap)
	return raw, snap, err
}

// writeFlowsTable prints one line per process and destination, most
// recent first. REQS counts HTTP requests and L4 flows, CONNS kernel
// connect events; ALLOW counts allowed requests and flows, DENY denied ones
// and connects refused in the kernel, WOULD_DENY audit-mode would-denies.
func writeFlowsTable(w io.Writer, s flows.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tWORKLOAD\tDESTINATION\tREQS\tCONNS\tIN\tOUT\tALLOW\tDENY\tWOULD_DENY\tLAST SEEN")
	if len(s.Rows) == 0 {
		tw.Flush()
		fmt.Fprintln(w, "(no egress seen yet)")
		return
	}
	for _, r := range s.Rows {
		proc := r.Comm
		if proc == "" && r.Exe != "" {
			proc = path.Base(r.Exe)
		}
		if proc == "" {
			proc = "-"
		}
		pid := "-"
		if r.PID != 0 {
			pid = strconv.Itoa(r.PID)
		}
		wl := shorten(r.Workload, 40)
		if r.Image != "" {
			wl += " [" + shorten(r.Image, 32) + "]"
		}
		if r.PID == 0 && r.Client != "" {
			wl = shorten(r.Workload, 24) + " @" + r.Client
		}
		dests := r.Destinations
		if len(dests) == 0 {
			dests = []flows.Dest{{Counts: r.Counts, LastSeen: r.LastSeen}}
		}
		for _, d := range dests {
			name := d.Name()
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n",
				shorten(proc, 16), pid, wl, shorten(name, 48),
				d.Requests+d.Flows, d.Connects, humanBytes(d.BytesIn), humanBytes(d.BytesOut),
				d.Decisions["allow"],
				d.Decisions["deny"]+d.Decisions["denied"],
				d.Decisions["would_deny"],
				ago(s.Time, d.LastSeen))
		}
	}
	tw.Flush()
	writeMCPFlows(w, s)
	writeDirect(w, s)
	writeUntrusted(w, s)
	if s.Evicted > 0 {
		fmt.Fprintf(w, "(%d older processes evicted from the agent's table)\n", s.Evicted)
	}
}

// writeMCPFlows prints the MCP tools each process called, per server:
// calls, denials (DENIED by Sluice, WOULD_DENY in audit mode) and
// JSON-RPC errors.
func writeMCPFlows(w io.Writer, s flows.Snapshot) {
	var tw *tabwriter.Writer
	for _, r := range s.Rows {
		for _, d := range r.Destinations {
			for _, t := range d.MCPTools {
				if tw == nil {
					fmt.Fprintln(w, "\nMCP TOOLS")
					tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "PROCESS\tWORKLOAD\tSERVER\tTOOL\tCALLS\tDENIED\tWOULD_DENY\tERRORS")
				}
				proc := r.Comm
				if proc == "" {
					proc = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", shorten(proc, 16), shorten(r.Workload, 40), shorten(d.Name(), 48),
					t.Name, t.Calls, t.Denied, t.WouldDeny, t.Errors)
			}
		}
	}
	if tw != nil {
		tw.Flush()
	}
}

// shorten keeps the end of s (the informative part of a cgroup path).
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return "…" + string(r[len(r)-n+1:])
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	default:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
}

// writeDirect flags the connections that were not intercepted (sent
// direct by agent.bypassCIDRs or a port outside agent.ports): they have no
// request or flow record, only the kernel's connect record.
func writeDirect(w io.Writer, s flows.Snapshot) {
	for _, r := range s.Rows {
		dests := r.Destinations
		if len(dests) == 0 {
			dests = []flows.Dest{{Counts: r.Counts}}
		}
		for _, d := range dests {
			if n := d.Decisions["direct"]; n > 0 {
				name := d.Name()
				if name == "" {
					name = "-"
				}
				fmt.Fprintf(w, "NOT INTERCEPTED: %s (pid %d) made %d connection(s) to %s directly, without the proxy\n", r.Comm, r.PID, n, name)
			}
		}
	}
}

// writeUntrusted flags the clients that rejected Sluice's certificate
// (decision client_untrusted): they lack the Sluice CA, or pin the host's
// certificate.
func writeUntrusted(w io.Writer, s flows.Snapshot) {
	for _, r := range s.Rows {
		for _, d := range r.Destinations {
			if n := d.Decisions[audit.DecisionClientUntrusted]; n > 0 {
				fmt.Fprintf(w, "CLIENT UNTRUSTED: %s (pid %d, %s) rejected Sluice's certificate for %s %d time(s): give it the CA (sluice ca export), or set tls.onUntrustedClient: passthrough for a client that pins\n", r.Comm, r.PID, r.Workload, d.Name(), n)
			}
		}
	}
}
