package agent

import (
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/cgroup2"
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
