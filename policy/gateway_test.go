package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/cache"
)

// A cache block with every mistake: each is named by its path, value and
// fix, all at once.
func TestCacheProblems(t *testing.T) {
	src := `version: 1
rules:
- name: a
  destinations: {hosts: [a.example]}
  action: allow
  cache:
    ttl: soon
    statuses: [200, 99]
    contentTypes: [json, "text/html; charset=utf-8", "*/*"]
    maxObjectSize: 1XB
- name: b
  action: deny
  cache: {ttl: 1m}
`
	want := []string{
		`p.yaml:7: rules[0].cache.ttl "soon": use a positive duration like "30s" or "5m", or remove it to cache only responses that state their freshness`,
		`p.yaml:8: rules[0].cache.statuses[1] 99: an HTTP status is between 100 and 599, e.g. 200`,
		`p.yaml:9: rules[0].cache.contentTypes[0] "json": a media type is type/subtype or type/*, e.g. application/json or text/*`,
		`p.yaml:9: rules[0].cache.contentTypes[1] "text/html; charset=utf-8": parameters are not matched, use "text/html"`,
		`p.yaml:9: rules[0].cache.contentTypes[2] "*/*": a media type is type/subtype or type/*, e.g. application/json or text/*`,
		`p.yaml:10: rules[0].cache.maxObjectSize "1XB": unknown unit "XB": use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "1MB"`,
		`p.yaml:13: rules[1].cache: a deny rule forwards nothing to cache: move cache to an allow rule`,
	}
	_, err := Decode([]byte(src), "p.yaml")
	var got []string
	for _, pr := range Problems(err) {
		got = append(got, pr.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// The decision of a request an allow rule with a cache block matches
// carries the compiled cache rule; other requests carry none.
func TestDecisionCarriesCache(t *testing.T) {
	e, err := Parse([]byte(`version: 1
rules:
- name: cached
  destinations: {hosts: [api.example.com]}
  action: allow
  cache: {ttl: 5m, statuses: [200], contentTypes: [Application/JSON], maxObjectSize: 2KB, shared: true}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	conn := &Conn{Host: "api.example.com", Port: 443}
	d := e.Request(context.Background(), &Request{Conn: conn, Method: "GET", Path: "/x"})
	want := cache.Rule{TTL: 5 * time.Minute, Statuses: []int{200}, ContentTypes: []string{"application/json"}, MaxObjectSize: 2000, Shared: true}
	if d.Rule != "cached" || d.Cache == nil || d.Cache.TTL != want.TTL || d.Cache.MaxObjectSize != want.MaxObjectSize ||
		!d.Cache.Shared || d.Cache.ContentTypes[0] != "application/json" || d.Cache.Statuses[0] != 200 {
		t.Fatalf("decision = %+v cache %+v", d, d.Cache)
	}
	other := e.Request(context.Background(), &Request{Conn: &Conn{Host: "other.example.com", Port: 443}, Method: "GET", Path: "/x"})
	if other.Cache != nil {
		t.Fatalf("default rule decision carries a cache: %+v", other.Cache)
	}
}
