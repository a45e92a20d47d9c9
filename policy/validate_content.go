package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// This file validates what a request carries: content rules, header
// changes, body logging and credentials (model_content.go).

// checkCredentials checks the policy's credentials.
func (d *decoder) checkCredentials(cs []Credential) {
	names := map[string]int{}
	for i, c := range cs {
		at := fmt.Sprintf("credentials[%d]", i)
		switch {
		case c.Name == "":
			d.add(at+".name", "", "missing: every credential needs a name, e.g. name: openai")
		case !credName.MatchString(c.Name):
			d.add(at+".name", c.Name, "use letters, digits, '.', '_' and '-' only (at most 64), e.g. openai")
		default:
			if j, dup := names[c.Name]; dup {
				d.add(at+".name", c.Name, "duplicate of credentials[%d].name, names must be unique", j)
			}
			names[c.Name] = i
		}
		switch {
		case c.File == "" && c.Env == "":
			d.add(at, "", "no secret source: set file (e.g. /var/run/secrets/openai/key) or env (e.g. OPENAI_API_KEY); a secret never goes in the policy file")
		case c.File != "" && c.Env != "":
			d.add(at+".env", c.Env, "file and env are both set: keep one")
		case c.File != "" && !strings.HasPrefix(c.File, "/"):
			d.add(at+".file", c.File, "use an absolute path, e.g. /var/run/secrets/%s/key", c.Name)
		case c.Env != "" && !envName.MatchString(c.Env):
			d.add(at+".env", c.Env, "not an environment variable name: letters, digits and '_', e.g. OPENAI_API_KEY")
		}
		if len(c.Hosts) == 0 {
			d.add(at+".hosts", "", "missing: bind the credential to the hosts it may go to, e.g. hosts: [api.openai.com]")
		}
		for j, h := range c.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", at, j)
			if h == "*" {
				d.add(hp, h, "a credential bound to every host protects nothing: name its hosts, e.g. api.openai.com")
				continue
			}
			d.checkHost(hp, h)
		}
	}
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkCarry checks a rule's content, headers and logBodies.
func (d *decoder) checkCarry(at string, r Rule, creds []Credential) {
	if r.CaptureSecrets && !r.Capture {
		d.add(at+".captureSecrets", "", "applies to a rule with capture: true: add capture: true, or remove captureSecrets")
	}
	if r.Action == "deny" {
		for _, f := range []struct {
			key string
			set bool
		}{{"content", r.Content != nil}, {"headers", r.Headers != nil}, {"logBodies", r.LogBodies != nil}} {
			if f.set {
				d.add(at+"."+f.key, "", "a deny rule forwards nothing: move %s to an allow rule", f.key)
			}
		}
		return
	}
	if c := r.Content; c != nil {
		d.checkContent(at+".content", c)
	}
	if h := r.Headers; h != nil {
		d.checkHeaderOps(at+".headers.request", h.Request, r, creds)
		d.checkHeaderOps(at+".headers.response", h.Response, r, nil)
	}
	if lb := r.LogBodies; lb != nil {
		for _, f := range []struct{ key, v string }{{"request", lb.Request}, {"response", lb.Response}} {
			if f.v == "" {
				continue
			}
			if _, err := ParseSize(f.v); err != nil {
				d.add(at+".logBodies."+f.key, f.v, "%v", err)
			}
		}
	}
}

func (d *decoder) checkContent(at string, c *Content) {
	if len(c.Match) == 0 {
		d.add(at+".match", "", "missing: list what to look for, e.g. match: [{detectors: [all], action: block}]")
	}
	if c.MaxDecompressed != "" {
		if _, err := ParseSize(c.MaxDecompressed); err != nil {
			d.add(at+".maxDecompressed", c.MaxDecompressed, "%v", err)
		}
	}
	switch c.OnUninspectable {
	case "", "block", "allow":
	default:
		d.add(at+".onUninspectable", c.OnUninspectable, "use block or allow")
	}
	for i, m := range c.Match {
		mp := fmt.Sprintf("%s.match[%d]", at, i)
		switch m.Action {
		case ActionBlock, ActionRedact, ActionAudit:
		case "":
			d.add(mp+".action", "", "missing: use block, redact or audit")
		default:
			d.add(mp+".action", m.Action, "use block, redact or audit")
		}
		if len(m.Detectors) == 0 && len(m.Patterns) == 0 {
			d.add(mp, "", "nothing to look for: add detectors (e.g. [all]) or patterns")
		}
		for j, n := range m.Detectors {
			if n != "all" && detectorByName(n) == nil {
				hint := ""
				if s := closest(n, Detectors()); s != "" {
					hint = fmt.Sprintf("did you mean %q? ", s)
				}
				d.add(fmt.Sprintf("%s.detectors[%d]", mp, j), n, "unknown detector: %sknown are all, %s", hint, strings.Join(Detectors(), ", "))
			}
		}
		for j, p := range m.Patterns {
			pp := fmt.Sprintf("%s.patterns[%d]", mp, j)
			if p.Name == "" {
				d.add(pp+".name", "", "missing: name the pattern for records and answers, e.g. name: internal-id")
			} else if slices.Contains(Detectors(), p.Name) || p.Name == "all" {
				d.add(pp+".name", p.Name, "is a built-in detector's name: choose another")
			}
			re, err := regexp.Compile(p.Regex)
			switch {
			case p.Regex == "":
				d.add(pp+".regex", "", "missing: give an RE2 regular expression, e.g. regex: 'ACME-[0-9]{8}'")
			case err != nil:
				d.add(pp+".regex", p.Regex, "not an RE2 regular expression: %v", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
			case re.MatchString(""):
				d.add(pp+".regex", p.Regex, "matches the empty string, so it would match everywhere: require at least one character")
			}
		}
		for j, w := range m.In {
			switch w {
			case InHeaders, InURL, InBody:
			default:
				d.add(fmt.Sprintf("%s.in[%d]", mp, j), w, "use headers, url or body")
			}
		}
	}
}

func (d *decoder) checkHeaderOps(at string, o HeaderOps, r Rule, creds []Credential) {
	for i, n := range o.Remove {
		if !httpguts.ValidHeaderFieldName(n) {
			d.add(fmt.Sprintf("%s.remove[%d]", at, i), n, "not a header name, e.g. X-Api-Key")
		}
	}
	for _, kv := range []struct {
		key string
		m   map[string]string
	}{{"set", o.Set}, {"add", o.Add}} {
		for n, v := range kv.m {
			p := at + "." + kv.key + "." + n
			if !httpguts.ValidHeaderFieldName(n) {
				d.add(p, n, "not a header name, e.g. X-Api-Key")
			}
			if !httpguts.ValidHeaderFieldValue(v) {
				d.add(p, v, "a header value can't hold control characters or line breaks")
			}
			for _, ref := range credRef.FindAllStringSubmatch(v, -1) {
				d.checkCredRef(p, ref[1], r, creds)
			}
		}
	}
}

// checkCredRef checks that ${cred:NAME} at p names a credential of the
// request direction bound to every host the rule can match.
func (d *decoder) checkCredRef(p, name string, r Rule, creds []Credential) {
	if creds == nil && !strings.Contains(p, ".request.") {
		d.add(p, "${cred:"+name+"}", "credentials go to upstreams only: use ${cred:...} in headers.request")
		return
	}
	i := slices.IndexFunc(creds, func(c Credential) bool { return c.Name == name })
	if i < 0 {
		d.add(p, "${cred:"+name+"}", "no credential named %q: add it under credentials", name)
		return
	}
	c := creds[i]
	if len(r.Destinations.Hosts) == 0 {
		d.add(p, "${cred:"+name+"}", "the rule matches any host but credential %q is bound to %s: add destinations.hosts within them", name, strings.Join(c.Hosts, ", "))
		return
	}
	for _, h := range r.Destinations.Hosts {
		if !hostWithin(h, c.Hosts) {
			d.add(p, "${cred:"+name+"}", "the rule matches %q but credential %q is bound to %s: bind it there (credentials[%d].hosts) or narrow destinations.hosts", h, name, strings.Join(c.Hosts, ", "), i)
		}
	}
}

// hostWithin reports whether every name pattern h matches is matched by
// one of hosts.
func hostWithin(h string, hosts []string) bool {
	if h == "*" {
		return slices.Contains(hosts, "*")
	}
	if rest, ok := strings.CutPrefix(h, "*."); ok {
		return slices.Contains(hosts, h) || slices.Contains(hosts, "*") || slices.ContainsFunc(hosts, func(c string) bool {
			s, ok := strings.CutPrefix(c, "*.")
			return ok && strings.HasSuffix(rest, "."+s)
		})
	}
	return newHostSet(hosts).match(h)
}
