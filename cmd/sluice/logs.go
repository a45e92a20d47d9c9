package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sluicehq/sluice/logsum"
)

func init() {
	register("logs", "summarize audit logs (logs summarize FILE…)", runLogs)
}

func logsUsage(w io.Writer) {
	fmt.Fprintln(w, `usage: sluice logs summarize [--json] [--top N] [FILE…]

Reads audit logs (JSON lines; gzip is detected), "-" or no FILE for stdin, and
reports rate-limit violations, denials and would-denials by rule, 401/403 and
5xx from upstreams, top workloads and hosts, and totals.`)
}

// logsStdin is what "-" reads; a variable so tests can replace it.
var logsStdin io.Reader = os.Stdin

func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		logsUsage(stderr)
		return 2
	}
	switch args[0] {
	case "summarize", "summarise":
		return runLogsSummarize(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		logsUsage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice logs: unknown subcommand %q\n\n", args[0])
		logsUsage(stderr)
		return 2
	}
}

func runLogsSummarize(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice logs summarize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the summary as one JSON document")
	top := fs.Int("top", 10, "rows per table (0: all)")
	fs.Usage = func() {
		logsUsage(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *top < 0 {
		fmt.Fprintf(stderr, "sluice logs summarize: --top %d: must be 0 (all) or more, e.g. 10\n", *top)
		return 2
	}
	files := fs.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	s := logsum.New()
	failed := false
	for _, name := range files {
		if ctx.Err() != nil {
			break
		}
		if err := readLog(s, name); err != nil {
			fmt.Fprintf(stderr, "sluice logs summarize: %v\n", err)
			failed = true
		}
	}
	sum := s.Summary(*top)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			fmt.Fprintf(stderr, "sluice logs summarize: %v\n", err)
			return 1
		}
	} else if err := logsum.WriteText(stdout, sum); err != nil {
		fmt.Fprintf(stderr, "sluice logs summarize: %v\n", err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

func readLog(s *logsum.Summarizer, name string) error {
	if name == "-" {
		return s.Read("-", logsStdin)
	}
	f, err := os.Open(name)
	if err != nil {
		// Counted as an input that could not be read, so the summary says so.
		return s.Read(name, errReader{err})
	}
	defer f.Close()
	return s.Read(name, f)
}

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
