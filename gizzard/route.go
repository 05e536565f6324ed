package gizzard

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"
)

// FNV-1a 64 parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// Hash returns the routing hash of a content key: 64-bit FNV-1a (Gizzard's
// key hash), followed by MurmurHash3's 64-bit finalizer. Forwardings split
// the hash space by its high bits, and FNV-1a alone leaves the high bits of
// short keys far from uniform; the finalizer spreads every input bit over
// all output bits.
func Hash(key []byte) uint64 {
	h := uint64(fnvOffset64)
	for _, c := range key {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return fmix64(h)
}

// fmix64 is MurmurHash3's 64-bit finalizer.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// hashString is Hash of a string's bytes.
func hashString(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// OwnerHash returns Hash of the owner as 8 bytes, big endian. An index
// entry is routed by OwnerHash(owner), so all of an owner's entries are on
// one shard tree.
func OwnerHash(owner uint64) uint64 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], owner)
	return Hash(b[:])
}

// Lookup returns the forwarding of table that hash h goes to: the one with
// the greatest Base <= h. It returns ErrNoTable for an unknown table and
// ErrNoForwarding when no forwarding of the table has a base at or below h.
func (m *Map) Lookup(table string, h uint64) (Forwarding, error) {
	if _, ok := m.Tables[table]; !ok {
		return Forwarding{}, fmt.Errorf("%w: %q", ErrNoTable, table)
	}
	fs := m.Forwardings[table]
	i := sort.Search(len(fs), func(i int) bool { return fs[i].Base > h })
	if i == 0 {
		return Forwarding{}, fmt.Errorf("%w: table %q has none at or below %s", ErrNoForwarding, table, hex64(h))
	}
	return fs[i-1], nil
}

// Leaf is a physical shard and the node holding it.
type Leaf struct {
	Shard string `json:"shard"`
	Node  string `json:"node"`
}

// WritePlan is where a write to a shard tree goes.
type WritePlan struct {
	// Targets are the physical shards the write must reach, deduplicated
	// and sorted by shard id.
	Targets []Leaf `json:"targets,omitempty"`
	// Rejected are the wrappers (ReadOnly, Blocked) on write paths that
	// refuse the write, sorted by shard id. The router refuses a write
	// whose plan has any.
	Rejected []Rejection `json:"rejected,omitempty"`
	// Dropped is set when some write path ends in a BlackHole, where the
	// write is accepted and dropped.
	Dropped bool `json:"dropped,omitempty"`
}

// Rejection is a wrapper that refuses writes.
type Rejection struct {
	Shard  string `json:"shard"` // the wrapper that refused
	Kind   Kind   `json:"kind"`
	Reason string `json:"reason"`
}

// walker walks one shard tree, guarding against a map that breaks the
// invariants (a missing shard or a cycle) so that routing never loops.
type walker struct {
	m    *Map
	seen map[string]bool
}

func (w *walker) enter(parent, id string) (Shard, error) {
	s, ok := w.m.Shards[id]
	if !ok {
		if parent == "" {
			return Shard{}, fmt.Errorf("%w: %q", ErrNoShard, id)
		}
		return Shard{}, fmt.Errorf("%w: shard %q links to %q, which does not exist", ErrInvalidMap, parent, id)
	}
	if w.seen[id] {
		return Shard{}, fmt.Errorf("%w: shard %q is reached twice (a cycle or a second parent)", ErrInvalidMap, id)
	}
	w.seen[id] = true
	return s, nil
}

// PlanWrite returns where a write to the tree rooted at root goes:
// Replicating writes every child, WriteOnly passes through, ReadOnly and
// Blocked refuse (Rejected), BlackHole accepts and drops (Dropped). It
// returns ErrNoShard for an unknown root.
func (m *Map) PlanWrite(root string) (WritePlan, error) {
	w := walker{m: m, seen: map[string]bool{}}
	var p WritePlan
	if err := w.write("", root, &p); err != nil {
		return WritePlan{}, err
	}
	slices.SortFunc(p.Targets, func(a, b Leaf) int { return cmp.Compare(a.Shard, b.Shard) })
	p.Targets = slices.CompactFunc(p.Targets, func(a, b Leaf) bool { return a.Shard == b.Shard })
	slices.SortFunc(p.Rejected, func(a, b Rejection) int { return cmp.Compare(a.Shard, b.Shard) })
	return p, nil
}

func (w *walker) write(parent, id string, p *WritePlan) error {
	s, err := w.enter(parent, id)
	if err != nil {
		return err
	}
	switch s.Kind {
	case KindPhysical:
		p.Targets = append(p.Targets, Leaf{Shard: s.ID, Node: s.Node})
		return nil
	case KindReadOnly:
		p.Rejected = append(p.Rejected, Rejection{Shard: s.ID, Kind: s.Kind, Reason: fmt.Sprintf("read_only shard %q refuses writes", s.ID)})
		return nil
	case KindBlocked:
		p.Rejected = append(p.Rejected, Rejection{Shard: s.ID, Kind: s.Kind, Reason: fmt.Sprintf("blocked shard %q refuses writes", s.ID)})
		return nil
	case KindBlackHole:
		p.Dropped = true
		return nil
	case KindReplicating, KindWriteOnly:
		for _, l := range s.Children {
			if err := w.write(s.ID, l.Child, p); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%w: shard %q has unknown kind %q", ErrInvalidMap, s.ID, s.Kind)
}

// PlanRead returns the physical shards a read of the tree rooted at root
// tries, in order. A Replicating shard orders its children by weighted
// rendezvous hashing of (pick, child id): the first is a weighted choice
// (a child of weight w comes first for a share w/total of picks) and the
// rest follow as failover, in the same order for the same pick. Pass a
// key's hash as pick to keep its reads on one replica, or a random or
// rotating value to spread them. ReadOnly passes through; WriteOnly,
// Blocked and BlackHole subtrees give no candidates. With no candidates it
// returns ErrBlocked if a Blocked shard is on a read path and ErrNoReadable
// otherwise; ErrNoShard for an unknown root.
func (m *Map) PlanRead(root string, pick uint64) ([]Leaf, error) {
	w := walker{m: m, seen: map[string]bool{}}
	var out []Leaf
	var blocked string
	if err := w.read("", root, pick, &out, &blocked); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		if blocked != "" {
			return nil, fmt.Errorf("%w: no readable shard under %q; %q is blocked", ErrBlocked, root, blocked)
		}
		return nil, fmt.Errorf("%w: under %q", ErrNoReadable, root)
	}
	return out, nil
}

func (w *walker) read(parent, id string, pick uint64, out *[]Leaf, blocked *string) error {
	s, err := w.enter(parent, id)
	if err != nil {
		return err
	}
	switch s.Kind {
	case KindPhysical:
		*out = append(*out, Leaf{Shard: s.ID, Node: s.Node})
		return nil
	case KindBlocked:
		if *blocked == "" {
			*blocked = s.ID
		}
		return nil
	case KindWriteOnly, KindBlackHole:
		return nil
	case KindReadOnly:
		for _, l := range s.Children {
			if err := w.read(s.ID, l.Child, pick, out, blocked); err != nil {
				return err
			}
		}
		return nil
	case KindReplicating:
		for _, l := range readOrder(s.Children, pick) {
			if err := w.read(s.ID, l.Child, pick, out, blocked); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%w: shard %q has unknown kind %q", ErrInvalidMap, s.ID, s.Kind)
}

// readOrder orders links by weighted rendezvous (highest random weight)
// hashing: each child scores weight / -ln(u), u uniform in (0, 1) from a
// hash of (pick, child id); highest first, ties by child id. A child comes
// first with probability weight / total weight, and adding or removing one
// child leaves the relative order of the others unchanged.
func readOrder(links []Link, pick uint64) []Link {
	type scored struct {
		l Link
		s float64
	}
	ss := make([]scored, len(links))
	for i, l := range links {
		ss[i] = scored{l, rendezvousScore(pick, l.Child, l.Weight)}
	}
	slices.SortStableFunc(ss, func(a, b scored) int {
		if c := cmp.Compare(b.s, a.s); c != 0 {
			return c
		}
		return cmp.Compare(a.l.Child, b.l.Child)
	})
	out := make([]Link, len(ss))
	for i, s := range ss {
		out[i] = s.l
	}
	return out
}

// rendezvousScore is a child's weighted rendezvous score for pick.
func rendezvousScore(pick uint64, child string, weight int) float64 {
	h := mix64(hashString(child) ^ (pick * 0x9e3779b97f4a7c15))
	u := (float64(h>>11) + 0.5) / (1 << 53) // in (0, 1)
	return float64(max(weight, 1)) / -math.Log(u)
}

// mix64 is splitmix64's finalizer: a bijection that spreads every input bit
// over the output.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
