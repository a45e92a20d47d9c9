package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// adminBase is the base URL of an agent's admin listener given as --agent:
// host:port or a URL.
func adminBase(agent string) string {
	base := agent
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimRight(base, "/")
}

// callAdmin sends a request to the admin API at url (a GET when body is
// nil, else a POST of body as JSON) and decodes the JSON answer into out,
// returning the answer's bytes too.
func callAdmin(ctx context.Context, c *http.Client, url string, body any, out any) ([]byte, error) {
	method, verb := http.MethodGet, "fetch"
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode the request to %s: %w", url, err)
		}
		method, verb, rd = http.MethodPost, "post", bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", verb, url, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is the agent running, and is --agent its admin listener?)", verb, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", verb, url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", verb, url, resp.Status, strings.TrimSpace(string(raw)))
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("decode %s: %w", url, err)
	}
	return raw, nil
}
