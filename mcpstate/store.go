// Package mcpstate keeps what Sluice has seen of MCP servers' tools, per
// server and workload, for rug-pull detection: each tool's hash (of its
// name, description and input schema) as acknowledged — its first sight,
// or the last `sluice mcp ack` — and, when a later tools/list describes
// it otherwise, that change (the new hash, which fields, since when).
// A changed tool stays changed until acknowledged, so the policy can
// deny calls to it (mcp.onToolChange). The store is written to a JSON
// file when it has one (proxy.mcpStateFile), so acknowledgements and
// first sights survive a restart; without one it lives in memory.
package mcpstate

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sluicehq/sluice/mcp"
)

// DefaultMaxTools bounds the tools a store keeps (over every server and
// workload); tools first seen past it are not tracked.
const DefaultMaxTools = 65536

// Tool is one tool of one server as one workload saw it.
type Tool struct {
	Name string `json:"name"`
	// Hash is the acknowledged hash (hex SHA-256): the tool as first
	// seen, or as acknowledged last.
	Hash string `json:"hash"`
	// Fields are the acknowledged per-field hashes (mcp.ToolFields).
	Fields    [len(mcp.ToolFields)]string `json:"fields"`
	FirstSeen time.Time                   `json:"first_seen"`
	LastSeen  time.Time                   `json:"last_seen"`
	// Change is set while the tool as last listed differs from Hash and
	// is not acknowledged.
	Change *Change `json:"change,omitempty"`
}

// Change is a tool described otherwise than acknowledged.
type Change struct {
	// Hash is the tool's hash as listed now; Fields name the fields that
	// differ from the acknowledged ones.
	Hash      string                      `json:"hash"`
	FieldHash [len(mcp.ToolFields)]string `json:"field_hashes"`
	Fields    []string                    `json:"changed_fields"`
	// Since is when the change was first seen.
	Since time.Time `json:"since"`
}

// Server is the tools one workload saw at one server.
type Server struct {
	// Server is scheme://host[:port]/path of the MCP endpoint.
	Server   string  `json:"server"`
	Workload string  `json:"workload"`
	Tools    []*Tool `json:"tools"`
}

// Snapshot is the JSON document of the admin API's /api/mcp and of the
// state file: servers ordered by server then workload, tools by name.
type Snapshot struct {
	Time    time.Time `json:"time"`
	Servers []Server  `json:"servers"`
}

// Seen is a tool change newly seen by Observe.
type Seen struct {
	Tool             string
	OldHash, NewHash string
	Fields           []string
}

// Store is safe for concurrent use.
type Store struct {
	path string
	max  int

	mu    sync.Mutex
	by    map[key]map[string]*Tool
	n     int
	dirty bool
}

type key struct{ server, workload string }

// Open loads the store of the state file path, creating none yet; an
// empty path keeps the store in memory. max bounds the tools kept
// (DefaultMaxTools when 0).
func Open(path string, max int) (*Store, error) {
	if max <= 0 {
		max = DefaultMaxTools
	}
	s := &Store{path: path, max: max, by: map[key]map[string]*Tool{}}
	if path == "" {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read mcp state %s: %w", path, err)
	}
	var snap Snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("read mcp state %s: %w (remove the file to start afresh; every tool is then first seen again)", path, err)
	}
	for _, sv := range snap.Servers {
		k := key{sv.Server, sv.Workload}
		for _, t := range sv.Tools {
			if t == nil || t.Name == "" || s.n >= max {
				continue
			}
			if s.by[k] == nil {
				s.by[k] = map[string]*Tool{}
			}
			if _, dup := s.by[k][t.Name]; !dup {
				s.by[k][t.Name] = t
				s.n++
			}
		}
	}
	return s, nil
}

func hexOf(h [32]byte) string { return hex.EncodeToString(h[:]) }

// Observe notes the tools a tools/list answer of server listed to
// workload at now, and returns the changes seen for the first time: a
// tool whose hash differs from the acknowledged one, unless that same
// hash was already reported. A tool back to its acknowledged hash is no
// longer changed. It writes the state file when something changed.
func (s *Store) Observe(server, workload string, tools []mcp.Tool, now time.Time) ([]Seen, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{server, workload}
	m := s.by[k]
	var out []Seen
	for _, t := range tools {
		h := hexOf(t.Hash)
		var fields [len(mcp.ToolFields)]string
		for i, f := range t.Fields {
			fields[i] = hexOf(f)
		}
		old := m[t.Name]
		switch {
		case old == nil:
			if s.n >= s.max {
				continue
			}
			if m == nil {
				m = map[string]*Tool{}
				s.by[k] = m
			}
			m[t.Name] = &Tool{Name: t.Name, Hash: h, Fields: fields, FirstSeen: now, LastSeen: now}
			s.n++
			s.dirty = true
		case old.Hash == h:
			old.LastSeen = now
			if old.Change != nil {
				old.Change, s.dirty = nil, true // back as acknowledged
			}
		default:
			old.LastSeen = now
			if old.Change != nil && old.Change.Hash == h {
				continue // already reported
			}
			var changed []string
			for i, f := range mcp.ToolFields {
				if old.Fields[i] != fields[i] {
					changed = append(changed, f)
				}
			}
			old.Change = &Change{Hash: h, FieldHash: fields, Fields: changed, Since: now}
			s.dirty = true
			out = append(out, Seen{Tool: t.Name, OldHash: old.Hash, NewHash: h, Fields: changed})
		}
	}
	return out, s.saveLocked()
}

// Changed reports the unacknowledged change of tool at server for
// workload, if it has one.
func (s *Store) Changed(server, workload, tool string) (Seen, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.by[key{server, workload}][tool]
	if t == nil || t.Change == nil {
		return Seen{}, false
	}
	return Seen{Tool: tool, OldHash: t.Hash, NewHash: t.Change.Hash, Fields: slices.Clone(t.Change.Fields)}, true
}

// Ack acknowledges the changes of tool (every tool when "") at server
// for workload (every workload when ""): the tool as listed now becomes
// the acknowledged one. It returns the changes acknowledged and writes
// the state file.
func (s *Store) Ack(server, workload, tool string) ([]Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Server
	for k, m := range s.by {
		if k.server != server || (workload != "" && k.workload != workload) {
			continue
		}
		sv := Server{Server: k.server, Workload: k.workload}
		for name, t := range m {
			if t.Change == nil || (tool != "" && name != tool) {
				continue
			}
			c := *t
			sv.Tools = append(sv.Tools, &c)
			t.Hash, t.Fields, t.Change = t.Change.Hash, t.Change.FieldHash, nil
			s.dirty = true
		}
		if len(sv.Tools) > 0 {
			out = append(out, sv)
		}
	}
	sortServers(out)
	return out, s.saveLocked()
}

// Snapshot copies the store.
func (s *Store) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *Store) snapshotLocked() Snapshot {
	snap := Snapshot{Time: time.Now(), Servers: make([]Server, 0, len(s.by))}
	for k, m := range s.by {
		sv := Server{Server: k.server, Workload: k.workload, Tools: make([]*Tool, 0, len(m))}
		for _, t := range m {
			c := *t
			if t.Change != nil {
				ch := *t.Change
				ch.Fields = slices.Clone(ch.Fields)
				c.Change = &ch
			}
			sv.Tools = append(sv.Tools, &c)
		}
		snap.Servers = append(snap.Servers, sv)
	}
	sortServers(snap.Servers)
	return snap
}

func sortServers(ss []Server) {
	sort.Slice(ss, func(i, j int) bool {
		if ss[i].Server != ss[j].Server {
			return ss[i].Server < ss[j].Server
		}
		return ss[i].Workload < ss[j].Workload
	})
	for _, sv := range ss {
		sort.Slice(sv.Tools, func(i, j int) bool { return sv.Tools[i].Name < sv.Tools[j].Name })
	}
}

// saveLocked writes the state file when the store changed since the
// last write: a temporary file renamed over it, mode 0600.
func (s *Store) saveLocked() error {
	if s.path == "" || !s.dirty {
		return nil
	}
	b, err := json.MarshalIndent(s.snapshotLocked(), "", " ")
	if err != nil {
		return fmt.Errorf("write mcp state %s: %w", s.path, err)
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write mcp state %s: %w", s.path, err)
	}
	f, err := os.CreateTemp(dir, ".mcp-state-*")
	if err != nil {
		return fmt.Errorf("write mcp state %s: %w", s.path, err)
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write mcp state %s: %w", s.path, err)
	}
	if err := os.Rename(f.Name(), s.path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write mcp state %s: %w", s.path, err)
	}
	s.dirty = false
	return nil
}
