package policy

import "bytes"

// This file holds the one literal prefilter of the built-in detectors:
// a single pass over a window finds every occurrence of every detector's
// keywords (AKIA, ghp_, glpat-, xox, sk_live_, T3BlbkFJ, sk-ant-,
// PRIVATE KEY-----, eyJ, AccountKey=, private_key_id, and the stems of
// the key=/token= names), and each detector then runs its expression only
// near its own hits. Searching each keyword separately read the window
// forty-five times; this reads it once.

// hit is one keyword occurrence: where it starts, which keyword, its
// detector and its length.
type hit struct {
	pos int32
	kw  uint8 // index into anchors.kws
	det uint8 // the keyword's detector's id
	n   uint8 // the keyword's length
}

// anchorSet finds the keywords of the built-in detectors. Immutable.
type anchorSet struct {
	// pairs has a bit for each first two bytes of a keyword: one load
	// and one test per byte of the window rejects almost every position.
	pairs [1 << 16 / 64]uint64
	// second has a bit for each second and third bytes of a keyword:
	// two bytes that are neither a keyword's first two nor its second
	// and third let the pass skip two positions (Wu and Manber's shift
	// with blocks of two bytes).
	second [1 << 16 / 64]uint64
	// group maps those two bytes to 1+ an index into groups.
	group [1 << 16]uint8
	// groups are the keywords sharing two first bytes, with a bit set
	// of their third bytes.
	groups []anchorGroup
	// kws are all the keywords; det is each keyword's detector (its
	// id).
	kws [][]byte
	det []uint8
}

type anchorGroup struct {
	third [4]uint64
	kws   []uint8
}

// minKeyword is the shortest keyword: the pass looks at three bytes.
const minKeyword = 3

// newAnchorSet indexes the keywords of ds and numbers them (id, from 1).
func newAnchorSet(ds []*detector) *anchorSet {
	a := &anchorSet{}
	for di, d := range ds {
		d.id, d.kw0 = di+1, len(a.kws)
		if len(d.keywords) > maxDetectorKeywords {
			panic("policy: detector " + d.name + " has more than 16 keywords")
		}
		for _, k := range d.keywords {
			if len(k) < minKeyword {
				panic("policy: detector " + d.name + ": keyword " + string(k) + " shorter than 3 bytes")
			}
			if len(a.kws) == 255 || len(k) > 255 {
				panic("policy: more than 255 detector keywords, or one longer than 255 bytes")
			}
			ki := uint8(len(a.kws))
			a.kws = append(a.kws, k)
			a.det = append(a.det, uint8(d.id))
			p := uint16(k[0])<<8 | uint16(k[1])
			a.pairs[p>>6] |= 1 << (p & 63)
			q := uint16(k[1])<<8 | uint16(k[2])
			a.second[q>>6] |= 1 << (q & 63)
			if a.group[p] == 0 {
				a.groups = append(a.groups, anchorGroup{})
				a.group[p] = uint8(len(a.groups))
			}
			g := &a.groups[a.group[p]-1]
			g.third[k[2]>>6] |= 1 << (k[2] & 63)
			g.kws = append(g.kws, ki)
		}
	}
	return a
}

// find appends every keyword occurrence in b that starts at from or
// later to hits, by position (two keywords at one position in table
// order), and returns it.
func (a *anchorSet) find(b []byte, from int, hits []hit) []hit {
	last := len(b) - minKeyword
	for i := max(from, 0); i <= last; {
		// x is the second and third bytes of a keyword starting at i,
		// or the first two of one starting at i+1.
		x := uint16(b[i+1])<<8 | uint16(b[i+2])
		if a.second[x>>6]&(1<<(x&63)) == 0 {
			if a.pairs[x>>6]&(1<<(x&63)) == 0 {
				i += 2
			} else {
				i++
			}
			continue
		}
		p := uint16(b[i])<<8 | uint16(b[i+1])
		if a.pairs[p>>6]&(1<<(p&63)) != 0 {
			g := &a.groups[a.group[p]-1]
			if c := b[i+2]; g.third[c>>6]&(1<<(c&63)) != 0 {
				for _, k := range g.kws {
					if bytes.HasPrefix(b[i:], a.kws[k]) {
						hits = append(hits, hit{pos: int32(i), kw: k, det: a.det[k], n: uint8(len(a.kws[k]))})
					}
				}
			}
		}
		i++
	}
	return hits
}

// hitCache keeps a stream's hits between scans of its window, so that the
// bytes a scan holds back are not searched again by the next one.
type hitCache struct {
	hits []hit
	// upto: hits holds every keyword occurrence starting before upto
	// and ending in the window it was searched in.
	upto int
}

// update brings c's hits up to date with b, the window, and returns
// them.
func (c *hitCache) update(b []byte) []hit {
	c.hits = anchors.find(b, c.upto, c.hits)
	c.upto = len(b)
	return c.hits
}

// drop forgets the first n bytes of the window (released) and, when
// changed, every hit: the window's bytes were rewritten (redacted). A
// keyword the window's end cut is searched again with the next bytes.
func (c *hitCache) drop(n int, changed bool) {
	c.upto -= maxKeyword - 1
	if changed || n >= c.upto || c.upto <= 0 {
		c.hits, c.upto = c.hits[:0], 0
		return
	}
	for len(c.hits) > 0 && int(c.hits[len(c.hits)-1].pos) >= c.upto {
		c.hits = c.hits[:len(c.hits)-1]
	}
	i := 0
	for i < len(c.hits) && int(c.hits[i].pos) < n {
		i++
	}
	k := copy(c.hits, c.hits[i:])
	c.hits = c.hits[:k]
	for j := range c.hits {
		c.hits[j].pos -= int32(n)
	}
	c.upto -= n
}

// maxKeyword is the longest keyword ("PRIVATE KEY-----"); a test checks.
const maxKeyword = 16

// maxDetectorKeywords bounds one detector's keywords (eachHit's table).
const maxDetectorKeywords = 16

// eachHit calls f with the position, length and index (in d.keywords)
// of each of d's keyword hits in order, skipping an occurrence that overlaps the previous one of
// the same keyword (as a search resumed after each occurrence would).
func (d *detector) eachHit(hits []hit, f func(pos, n, k int)) {
	var next [maxDetectorKeywords]int32
	for _, h := range hits {
		if int(h.det) != d.id {
			continue
		}
		j, n := int(h.kw)-d.kw0, int32(h.n)
		if h.pos < next[j] {
			continue
		}
		next[j] = h.pos + n
		f(int(h.pos), int(n), j)
	}
}

// anchors is the prefilter of the built-in detector table.
var anchors = newAnchorSet(detectors)
