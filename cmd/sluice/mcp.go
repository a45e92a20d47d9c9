package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/mcpstate"
)

func init() {
	register("mcp", "MCP servers and tools a running agent has seen; acknowledge tool changes", runMCP)
}

const mcpUsage = `usage: sluice mcp [--agent ADDR] [--json] COMMAND

commands:
  servers                          the MCP servers seen, per workload
  tools [--server S] [--workload W] their tools: hash, first seen, changed?
  changes                          tools changed since acknowledged (rug pulls)
  ack [--workload W] SERVER TOOL   acknowledge a tool's change (the tool as
                                   listed now becomes the one calls are held to)
  ack --all [--workload W] SERVER  acknowledge every change of a server

SERVER is as listed (https://host/path) or, when that names one server, its
host or host/path. Under mcp.onToolChange: enforce, calls of a changed tool
are denied (JSON-RPC error -32031) until acknowledged.`

func runMCP(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	agent, asJSON := admin.DefaultListen, false
	common := func(fs *flag.FlagSet) {
		// Defaults are the values so far: the subcommand's flag set keeps
		// what the flags before the subcommand said.
		fs.StringVar(&agent, "agent", agent, "the agent's admin listener, host:port or http://host:port")
		fs.BoolVar(&asJSON, "json", asJSON, "print JSON")
	}
	fs := flag.NewFlagSet("sluice mcp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common(fs)
	fs.Usage = func() { fmt.Fprintln(stderr, mcpUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cmd := fs.Arg(0)
	sub := flag.NewFlagSet("sluice mcp "+cmd, flag.ContinueOnError)
	sub.SetOutput(stderr)
	common(sub)
	server := sub.String("server", "", "only this server (tools)")
	wl := sub.String("workload", "", "only this workload (tools, ack)")
	all := sub.Bool("all", false, "acknowledge every changed tool of the server (ack)")
	sub.Usage = fs.Usage
	if err := sub.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	base := adminBase(agent)
	c := &http.Client{Timeout: 5 * time.Second}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "sluice mcp %s: %v\n", cmd, err)
		return 1
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice mcp %s: %s\n", cmd, fmt.Sprintf(format, a...))
		return 2
	}
	switch cmd {
	case "servers", "tools", "changes":
		if sub.NArg() > 0 {
			return usage("unexpected argument %q", sub.Arg(0))
		}
	case "ack":
		if *all && sub.NArg() != 1 {
			return usage("give the SERVER (and no tool) with --all")
		}
		if !*all && sub.NArg() != 2 {
			return usage("give SERVER and TOOL, or --all SERVER")
		}
	default:
		return usage("unknown command %q (servers, tools, changes, ack)", cmd)
	}
	snap, raw, err := fetchMCP(ctx, c, base)
	if err != nil {
		return fail(err)
	}
	switch cmd {
	case "servers", "tools", "changes":
		if asJSON && cmd == "servers" && *server == "" && *wl == "" {
			stdout.Write(raw)
			return 0
		}
		keep := snap.Servers[:0]
		for _, sv := range snap.Servers {
			if (*server == "" || matchServer(sv.Server, *server)) && (*wl == "" || sv.Workload == *wl) {
				keep = append(keep, sv)
			}
		}
		snap.Servers = keep
		if asJSON {
			_ = json.NewEncoder(stdout).Encode(snap)
			return 0
		}
		switch cmd {
		case "servers":
			writeMCPServers(stdout, snap)
		case "tools":
			writeMCPTools(stdout, snap)
		default:
			writeMCPChanges(stdout, snap)
		}
		return 0
	default: // ack
		id, err := resolveServer(snap, sub.Arg(0))
		if err != nil {
			return fail(err)
		}
		req := admin.AckRequest{Server: id, Workload: *wl, All: *all}
		if !*all {
			req.Tool = sub.Arg(1)
		}
		res, err := postAck(ctx, c, base, req)
		if err != nil {
			return fail(err)
		}
		if asJSON {
			_ = json.NewEncoder(stdout).Encode(res)
			return 0
		}
		n := 0
		for _, sv := range res.Acknowledged {
			for _, t := range sv.Tools {
				n++
				fmt.Fprintf(stdout, "acknowledged %s at %s for %s: %s (%s) is now %s\n", t.Name, sv.Server, sv.Workload,
					strings.Join(t.Change.Fields, ", "), short(t.Hash), short(t.Change.Hash))
			}
		}
		if n == 0 {
			fmt.Fprintf(stderr, "sluice mcp ack: no unacknowledged change of %s at %s\n", orAll(req.Tool), id)
			return 1
		}
		return 0
	}
}

func orAll(tool string) string {
	if tool == "" {
		return "any tool"
	}
	return tool
}

func fetchMCP(ctx context.Context, c *http.Client, base string) (mcpstate.Snapshot, []byte, error) {
	var snap mcpstate.Snapshot
	raw, err := callAdmin(ctx, c, base+admin.MCPPath, nil, &snap)
	return snap, raw, err
}

func postAck(ctx context.Context, c *http.Client, base string, ack admin.AckRequest) (admin.AckResponse, error) {
	var res admin.AckResponse
	_, err := callAdmin(ctx, c, base+admin.MCPAckPath, ack, &res)
	return res, err
}

// matchServer reports whether arg names server: the whole of it, or it
// without its scheme, or its host.
func matchServer(server, arg string) bool {
	if server == arg {
		return true
	}
	u, err := url.Parse(server)
	if err != nil {
		return false
	}
	return strings.TrimPrefix(server, u.Scheme+"://") == arg || u.Host == arg || u.Hostname() == arg
}

// resolveServer finds the one server arg names.
func resolveServer(snap mcpstate.Snapshot, arg string) (string, error) {
	seen := map[string]bool{}
	for _, sv := range snap.Servers {
		if sv.Server == arg {
			return arg, nil
		}
		if matchServer(sv.Server, arg) {
			seen[sv.Server] = true
		}
	}
	var ids []string
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	switch len(ids) {
	case 1:
		return ids[0], nil
	case 0:
		return "", fmt.Errorf("no MCP server %q seen (sluice mcp servers lists them)", arg)
	}
	return "", fmt.Errorf("%q names %d servers (%s): give one as listed", arg, len(ids), strings.Join(ids, ", "))
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func writeMCPServers(w io.Writer, s mcpstate.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tWORKLOAD\tTOOLS\tCHANGED\tLAST SEEN")
	for _, sv := range s.Servers {
		changed := 0
		var last time.Time
		for _, t := range sv.Tools {
			if t.Change != nil {
				changed++
			}
			if t.LastSeen.After(last) {
				last = t.LastSeen
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", sv.Server, shorten(sv.Workload, 40), len(sv.Tools), changed, ago(s.Time, last))
	}
	tw.Flush()
	if len(s.Servers) == 0 {
		fmt.Fprintln(w, "(no MCP tools/list seen yet)")
	}
}

func writeMCPTools(w io.Writer, s mcpstate.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tWORKLOAD\tTOOL\tHASH\tFIRST SEEN\tCHANGED")
	for _, sv := range s.Servers {
		for _, t := range sv.Tools {
			changed := "no"
			if c := t.Change; c != nil {
				changed = fmt.Sprintf("yes: %s now %s, %s", strings.Join(c.Fields, ", "), short(c.Hash), ago(s.Time, c.Since))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sv.Server, shorten(sv.Workload, 40), t.Name, short(t.Hash), t.FirstSeen.Format(time.DateTime), changed)
		}
	}
	tw.Flush()
	if len(s.Servers) == 0 {
		fmt.Fprintln(w, "(no MCP tools/list seen yet)")
	}
}

func writeMCPChanges(w io.Writer, s mcpstate.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tWORKLOAD\tTOOL\tFIELDS\tACKED HASH\tNEW HASH\tSINCE")
	n := 0
	for _, sv := range s.Servers {
		for _, t := range sv.Tools {
			if c := t.Change; c != nil {
				n++
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sv.Server, shorten(sv.Workload, 40), t.Name, strings.Join(c.Fields, ","), short(t.Hash), short(c.Hash), ago(s.Time, c.Since))
			}
		}
	}
	tw.Flush()
	if n == 0 {
		fmt.Fprintln(w, "(no unacknowledged tool changes)")
	}
}
