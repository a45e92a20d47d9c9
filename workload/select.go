package workload

// Selector selects workloads by what people name them: the Kubernetes
// namespace, labels, the container's name and its image. Each list is
// ORed within and the fields are ANDed; an empty field selects
// everything, so the zero Selector selects every workload. Every value is
// a glob (Glob). It is the one matcher of agent.select and of the
// policy's workloads.namespaces/labels/containers/images.
type Selector struct {
	Namespaces []string
	// Labels must all be present, each value matching its glob.
	Labels     map[string]string
	Containers []string
	Images     []string
}

// Empty reports whether s names nothing (and so selects everything).
func (s Selector) Empty() bool {
	return len(s.Namespaces)+len(s.Labels)+len(s.Containers)+len(s.Images) == 0
}

// Match reports whether id is selected. A field s names is never matched
// by an empty value: a workload whose namespace is unknown is not in
// namespace "*".
func (s Selector) Match(id *Identity) bool {
	if !anyGlob(s.Namespaces, id.Namespace) || !anyGlob(s.Containers, id.Container) || !anyGlob(s.Images, id.Image) {
		return false
	}
	for k, v := range s.Labels {
		got, ok := id.Labels[k]
		if !ok || !Glob(v, got) {
			return false
		}
	}
	return true
}

func anyGlob(globs []string, v string) bool {
	if len(globs) == 0 {
		return true
	}
	if v == "" {
		return false
	}
	for _, g := range globs {
		if Glob(g, v) {
			return true
		}
	}
	return false
}

// Glob reports whether s matches pattern, where "*" matches any run of
// characters ("/" and ":" included, so "registry.example.com/team/*"
// matches every image of the team, with any tag) and "?" any one
// character; every other character matches itself. A pattern without
// either is an exact match.
func Glob(pattern, s string) bool {
	// Iterative wildcard matching with one backtrack point: linear in
	// practice, O(len(pattern)*len(s)) at worst, never exponential.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]) && pattern[p] != '*':
			p++
			i++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
