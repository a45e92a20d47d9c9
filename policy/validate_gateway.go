package policy

import (
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cache"
)

// checkCache validates a rule's cache block at path.
func (d *decoder) checkCache(path string, c *Cache, action string) {
	if action == "deny" {
		d.add(path, "", "a deny rule forwards nothing to cache: move cache to an allow rule")
		return
	}
	if c.TTL != "" {
		if v, err := time.ParseDuration(c.TTL); err != nil || v <= 0 {
			d.add(path+".ttl", c.TTL, "use a positive duration like \"30s\" or \"5m\", or remove it to cache only responses that state their freshness")
		}
	}
	for i, s := range c.Statuses {
		if s < 100 || s > 599 {
			d.addv(fmt.Sprintf("%s.statuses[%d]", path, i), s, "an HTTP status is between 100 and 599, e.g. 200")
		}
	}
	for i, t := range c.ContentTypes {
		at := fmt.Sprintf("%s.contentTypes[%d]", path, i)
		typ, sub, ok := strings.Cut(t, "/")
		switch {
		case !ok || typ == "" || sub == "" || typ == "*":
			d.add(at, t, "a media type is type/subtype or type/*, e.g. application/json or text/*")
		case strings.Contains(t, ";"):
			d.add(at, t, "parameters are not matched, use %q", strings.TrimSpace(t[:strings.Index(t, ";")]))
		case sub != "*":
			if _, _, err := mime.ParseMediaType(t); err != nil {
				d.add(at, t, "not a media type, e.g. application/json")
			}
		}
	}
	if c.MaxObjectSize != "" {
		if _, err := ParseSize(c.MaxObjectSize); err != nil {
			d.add(path+".maxObjectSize", c.MaxObjectSize, "%v", err)
		}
	}
}

// compileCache turns a validated cache block into the cache package's
// rule; nil for none.
func compileCache(c *Cache) *cache.Rule {
	if c == nil {
		return nil
	}
	r := &cache.Rule{Statuses: c.Statuses, Shared: c.Shared}
	r.TTL, _ = time.ParseDuration(c.TTL)
	for _, t := range c.ContentTypes {
		r.ContentTypes = append(r.ContentTypes, strings.ToLower(t))
	}
	if c.MaxObjectSize != "" {
		r.MaxObjectSize, _ = ParseSize(c.MaxObjectSize)
	}
	return r
}
