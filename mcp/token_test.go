package mcp

import (
	"encoding/base64"
	"slices"
	"testing"
)

// jwt builds an unsigned-looking JWT with payload as its claims.
func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestBearerAudience(t *testing.T) {
	for _, c := range []struct {
		name, header string
		aud          []string
		ok           bool
	}{
		{"string", "Bearer " + jwt(`{"aud":"https://mcp.example.com"}`), []string{"https://mcp.example.com"}, true},
		{"list", "Bearer " + jwt(`{"aud":["a.example","b.example"]}`), []string{"a.example", "b.example"}, true},
		{"scheme any case", "bearer  " + jwt(`{"aud":"x"}`), []string{"x"}, true},
		{"unsecured", "Bearer " + jwt(`{"aud":"x"}`)[:len(jwt(`{"aud":"x"}`))-4], []string{"x"}, true},
		{"padded payload", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJ4In0=.c2ln", []string{"x"}, true},
		{"no aud", "Bearer " + jwt(`{"sub":"u"}`), nil, false},
		{"null aud", "Bearer " + jwt(`{"aud":null}`), nil, false},
		{"empty aud", "Bearer " + jwt(`{"aud":""}`), nil, false},
		{"empty list", "Bearer " + jwt(`{"aud":[]}`), nil, false},
		{"aud number", "Bearer " + jwt(`{"aud":3}`), nil, false},
		{"opaque", "Bearer ghp_abcdefghijklmnop", nil, false},
		{"basic", "Basic dXNlcjpwYXNz", nil, false},
		{"jwe", "Bearer a.b.c.d.e", nil, false},
		{"bad base64", "Bearer a.!!!.c", nil, false},
		{"not json", "Bearer a." + base64.RawURLEncoding.EncodeToString([]byte("nope")) + ".c", nil, false},
		{"empty", "", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			aud, ok := BearerAudience(c.header)
			if ok != c.ok || !slices.Equal(aud, c.aud) {
				t.Errorf("BearerAudience = %q, %v; want %q, %v", aud, ok, c.aud, c.ok)
			}
		})
	}
}

func TestAudienceNames(t *testing.T) {
	for _, c := range []struct {
		aud  []string
		host string
		want bool
	}{
		{[]string{"api.example.com"}, "api.example.com", true},
		{[]string{"API.Example.com."}, "api.example.com", true},
		{[]string{"https://api.example.com/mcp"}, "api.example.com", true},
		{[]string{"https://api.example.com:8443"}, "api.example.com", true},
		{[]string{"other", "https://api.example.com"}, "api.example.com", true},
		{[]string{"https://mcp.example.com"}, "api.github.com", false},
		{[]string{"example.com"}, "api.example.com", false}, // no suffix matching
		{[]string{"api.example.com.evil"}, "api.example.com", false},
		{[]string{"urn:api.example.com"}, "api.example.com", false},
		{[]string{"api.example.com"}, "", false},
	} {
		if got := AudienceNames(c.aud, c.host); got != c.want {
			t.Errorf("AudienceNames(%q, %q) = %v, want %v", c.aud, c.host, got, c.want)
		}
	}
}
