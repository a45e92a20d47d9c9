package agent

import (
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// compileGlobs compiles agent.cgroups, reporting every bad pattern at once.
func compileGlobs(patterns []string) ([]cgroup2.Glob, error) {
	var globs []cgroup2.Glob
	var errs []error
	for i, p := range patterns {
		g, err := cgroup2.Compile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("agent.cgroups[%d]: %w", i, err))
			continue
		}
		globs = append(globs, g)
	}
	return globs, errors.Join(errs...)
}

// matchesAny reports whether the cgroup path rel matches one of globs.
func matchesAny(globs []cgroup2.Glob, rel string) bool {
	for _, g := range globs {
		if g.Match(rel) {
			return true
		}
	}
	return false
}

// compileSelect turns agent.select (validated by config) into selectors.
func compileSelect(sel []config.Select) []workload.Selector {
	out := make([]workload.Selector, 0, len(sel))
	for _, s := range sel {
		out = append(out, workload.Selector{Namespaces: s.Namespaces, Labels: s.Labels, Containers: s.Containers, Images: s.Images})
	}
	return out
}
