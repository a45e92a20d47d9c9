package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/sluicehq/sluice/policy"
)

func init() {
	register("policy", "check a policy file, print its JSON Schema or the default policy", runPolicy)
}

const policyUsage = `usage:
  sluice policy check FILE...   validate policy files; print every problem and warning with its line
  sluice policy schema          print the JSON Schema of the policy file
  sluice policy default         print the embedded default policy
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
