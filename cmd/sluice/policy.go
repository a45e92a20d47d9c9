package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sluicehq/sluice/advise"
	"github.com/sluicehq/sluice/policy"
)

func init() {
	register("policy", "check, suggest, test or diff policies; print the schema or the default policy", runPolicy)
}

const policyUsage = `usage:
  sluice policy check FILE...   validate policy files; print every problem and warning with its line
  sluice policy schema          print the JSON Schema of the policy file
  sluice policy default         print the embedded default policy
  sluice policy suggest [--by workload|container|namespace] [--paths] AUDIT.jsonl...
                                print a policy (enforce mode) that allows what the audit logs show
  sluice policy test POLICY AUDIT.jsonl...
                                replay the recorded requests against POLICY without sending anything and
                                print what would change; exit 1 when something that went through would be
                                denied. Rate limits count on a clock that follows the records' times, so
                                token buckets refill as they did (an approximation: buckets are per rule and
                                workload as in the proxy, redis limits are counted locally)
  sluice policy diff OLD NEW    explain what NEW allows or denies that OLD did not, on probe requests built
                                from every workload, host, port, method, path and tool either names;
                                exit 1 when they differ
`

func runPolicy(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch args[0] {
	case "check":
		if len(args) < 2 {
			fmt.Fprint(stderr, policyUsage)
			return 2
		}
		return policyCheck(args[1:], stdout, stderr)
	case "suggest":
		return policySuggest(args[1:], stdout, stderr)
	case "test":
		if len(args) < 3 {
			fmt.Fprint(stderr, policyUsage)
			return 2
		}
		return policyTest(args[1], args[2:], stdout, stderr)
	case "diff":
		if len(args) != 3 {
			fmt.Fprint(stderr, policyUsage)
			return 2
		}
		return policyDiff(args[1], args[2], stdout, stderr)
	case "schema":
		stdout.Write(policy.SchemaJSON)
		return 0
	case "default":
		stdout.Write(policy.DefaultYAML)
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice policy: unknown subcommand %q\n\n%s", args[0], policyUsage)
		return 2
	}
}

// policyCheck decodes and validates each file without compiling it (so no
// Redis connection is made), printing every problem as FILE:LINE: ....
// Warnings are printed the same way but do not fail the check.
func policyCheck(files []string, stdout, stderr io.Writer) int {
	code := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "sluice policy check: %v\n", err)
			code = 1
			continue
		}
		warns, err := policy.Check(b, f)
		if err != nil {
			probs := policy.Problems(err)
			for _, p := range probs {
				fmt.Fprintln(stderr, p.Error())
			}
			fmt.Fprintf(stderr, "%s: %d problem(s)\n", f, len(probs))
			code = 1
			continue
		}
		for _, w := range warns {
			fmt.Fprintln(stderr, w.Error())
		}
		fmt.Fprintf(stdout, "%s: ok\n", f)
	}
	return code
}

// readAudit decodes the audit logs, sorted by time.
func readAudit(files []string) (*advise.Log, error) {
	var l advise.Log
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		err = l.Read(name, f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	l.Sort()
	return &l, nil
}

func policySuggest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice policy suggest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	by := fs.String("by", advise.ByWorkload, "group records into workloads by workload (cgroup), container, namespace or exe (the executable: for sluice run, whose cgroup is new at every run)")
	paths := fs.Bool("paths", false, "add path templates (ids collapsed to *, deep trees to **)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch *by {
	case advise.ByWorkload, advise.ByContainer, advise.ByNamespace, advise.ByExe:
	default:
		fmt.Fprintf(stderr, "sluice policy suggest: --by %q: use workload, container or namespace\n", *by)
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	l, err := readAudit(fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "sluice policy suggest: %v\n", err)
		return 1
	}
	stdout.Write(advise.Suggest(l.Records, advise.SuggestOptions{By: *by, Paths: *paths, Sources: fs.Args()}))
	return 0
}

func policyTest(file string, logs []string, stdout, stderr io.Writer) int {
	b, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(stderr, "sluice policy test: %v\n", err)
		return 2
	}
	j, err := advise.NewJudge(b, file)
	if err != nil {
		for _, p := range policy.Problems(err) {
			fmt.Fprintln(stderr, p.Error())
		}
		fmt.Fprintf(stderr, "sluice policy test: %v\n", err)
		return 2
	}
	l, err := readAudit(logs)
	if err != nil {
		fmt.Fprintf(stderr, "sluice policy test: %v\n", err)
		return 2
	}
	rep := advise.Replay(j, l.Records)
	if err := rep.WriteText(stdout, file); err != nil {
		fmt.Fprintf(stderr, "sluice policy test: %v\n", err)
		return 2
	}
	if rep.Denied() > 0 {
		return 1
	}
	return 0
}

func policyDiff(oldFile, newFile string, stdout, stderr io.Writer) int {
	var data [2][]byte
	for i, f := range []string{oldFile, newFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "sluice policy diff: %v\n", err)
			return 2
		}
		data[i] = b
	}
	rep, err := advise.Diff(data[0], oldFile, data[1], newFile)
	if err != nil {
		fmt.Fprintf(stderr, "sluice policy diff: %v\n", err)
		return 2
	}
	if err := rep.WriteText(stdout, oldFile, newFile); err != nil {
		fmt.Fprintf(stderr, "sluice policy diff: %v\n", err)
		return 2
	}
	if rep.Changed() {
		return 1
	}
	return 0
}
