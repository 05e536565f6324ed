package timeline

import (
	"fmt"
	"slices"
	"strings"
)

// NumReplicas is the number of rings, and so of replicas of a timeline.
const NumReplicas = 3

const (
	// DefaultVirtualNodes is the default RingOptions.VirtualNodes.
	DefaultVirtualNodes = 128
	// MaxVirtualNodes is the largest RingOptions.VirtualNodes.
	MaxVirtualNodes = 1 << 12
)

// ringSeeds are the seeds of the three rings: the first three words of
// SHA-512's initial hash value, numbers with nothing up their sleeve.
// Every process must use the same seeds, so they are not configurable;
// changing them moves every timeline.
var ringSeeds = [NumReplicas]uint64{
	0x6a09e667f3bcc908,
	0xbb67ae8584caa73b,
	0x3c6ef372fe94f82b,
}

// RingOptions configure Rings. The zero value is usable.
type RingOptions struct {
	// VirtualNodes is the number of points each node has on each ring.
	// More points spread owners more evenly (the spread of a node's share
	// of a ring shrinks as 1/sqrt(VirtualNodes)) and cost a slightly
	// longer binary search. Default DefaultVirtualNodes (128); at most
	// MaxVirtualNodes. Every process must use the same value.
	VirtualNodes int
}

// EnsureDefaults fills zero fields with their defaults.
func (o *RingOptions) EnsureDefaults() {
	if o.VirtualNodes == 0 {
		o.VirtualNodes = DefaultVirtualNodes
	}
}

// Validate reports an option outside its allowed range.
func (o *RingOptions) Validate() error {
	if o.VirtualNodes < 1 || o.VirtualNodes > MaxVirtualNodes {
		return fmt.Errorf("virtual nodes %d: must be in [1, %d]: %w", o.VirtualNodes, MaxVirtualNodes, ErrInvalidOptions)
	}
	return nil
}

// Rings places timelines on nodes: three consistent-hash rings with
// different seeds, each with VirtualNodes points per node. Rings is
// immutable and safe for concurrent use; a membership change builds new
// Rings. The placement depends only on the set of node ids and the
// options, not on the order of the list, the process or the Go version.
type Rings struct {
	nodes  []string // sorted, distinct
	vnodes int
	rings  [NumReplicas]ring
}

// ring is one hash ring: its points sorted by hash (ties by node index).
type ring struct {
	seed   uint64
	hashes []uint64 // ascending
	nodes  []int32  // nodes[i] is the index in Rings.nodes of point i
}

// NewRings builds the rings of the given nodes. Node ids must be non-empty
// and distinct; at least one node is needed.
func NewRings(nodes []string, opts RingOptions) (*Rings, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("no nodes: %w", ErrInvalidNodes)
	}
	sorted := slices.Clone(nodes)
	slices.Sort(sorted)
	for i, n := range sorted {
		if n == "" {
			return nil, fmt.Errorf("empty node id: %w", ErrInvalidNodes)
		}
		if i > 0 && n == sorted[i-1] {
			return nil, fmt.Errorf("node %q listed twice: %w", n, ErrInvalidNodes)
		}
	}
	r := &Rings{nodes: sorted, vnodes: opts.VirtualNodes}
	for k := range r.rings {
		r.rings[k] = newRing(ringSeeds[k], sorted, opts.VirtualNodes)
	}
	return r, nil
}

func newRing(seed uint64, nodes []string, vnodes int) ring {
	type point struct {
		hash uint64
		node int32
	}
	pts := make([]point, 0, len(nodes)*vnodes)
	for i, n := range nodes {
		for v := range vnodes {
			pts = append(pts, point{pointHash(seed, n, v), int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		return int(a.node - b.node)
	})
	rg := ring{seed: seed, hashes: make([]uint64, len(pts)), nodes: make([]int32, len(pts))}
	for i, p := range pts {
		rg.hashes[i], rg.nodes[i] = p.hash, p.node
	}
	return rg
}

// Nodes returns the node ids of the rings, sorted.
func (r *Rings) Nodes() []string { return slices.Clone(r.nodes) }

// VirtualNodes returns the number of points of each node on each ring.
func (r *Rings) VirtualNodes() int { return r.vnodes }

// String returns a short description for logs.
func (r *Rings) String() string {
	return fmt.Sprintf("rings(%d vnodes: %s)", r.vnodes, strings.Join(r.nodes, ","))
}

// Replicas returns the nodes that hold owner's timeline, one per ring. Slot
// i is the first node clockwise from owner's hash on ring i that slots
// 0..i-1 have not taken, so with three or more nodes the three are
// distinct. With fewer nodes every node appears once and the slots left
// over are "": with two nodes slot 2 is "", with one node slots 1 and 2
// are. Slot 0 is where a read goes first.
func (r *Rings) Replicas(owner uint64) [NumReplicas]string {
	var out [NumReplicas]string
	var taken [NumReplicas]int32
	for k := range min(NumReplicas, len(r.nodes)) {
		rg := &r.rings[k]
		i := rg.search(ownerHash(rg.seed, owner))
	walk:
		for ; ; i++ {
			if i == len(rg.nodes) {
				i = 0 // a node is left, and every node is on every ring
			}
			for _, t := range taken[:k] {
				if rg.nodes[i] == t {
					continue walk
				}
			}
			break
		}
		taken[k] = rg.nodes[i]
		out[k] = r.nodes[taken[k]]
	}
	return out
}

// search returns the index of the first point whose hash is at least h, or
// len(hashes).
func (rg *ring) search(h uint64) int {
	lo, hi := 0, len(rg.hashes)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rg.hashes[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// MovedFraction returns the fraction of (owner, replica slot) assignments
// of owners that differ between before and after: 0 when none changes, 1
// when all do. It measures a membership change. A replica that changes
// slot but stays on its node counts as moved, so MovedFraction is at least
// MovedCopies; a slot that changes between a node and "" (fewer than three
// nodes) counts too. It returns 0 for no owners.
func MovedFraction(before, after *Rings, owners []uint64) float64 {
	if len(owners) == 0 {
		return 0
	}
	moved := 0
	for _, o := range owners {
		b, a := before.Replicas(o), after.Replicas(o)
		for k := range b {
			if b[k] != a[k] {
				moved++
			}
		}
	}
	return float64(moved) / float64(NumReplicas*len(owners))
}

// MovedCopies returns the fraction of the NumReplicas copies of owners'
// timelines that a change from before to after places on a node that did
// not hold them: the data a membership change moves, whatever the slots.
// It returns 0 for no owners.
func MovedCopies(before, after *Rings, owners []uint64) float64 {
	if len(owners) == 0 {
		return 0
	}
	moved := 0
	for _, o := range owners {
		b, a := before.Replicas(o), after.Replicas(o)
		for _, node := range a {
			if node != "" && node != b[0] && node != b[1] && node != b[2] {
				moved++
			}
		}
	}
	return float64(moved) / float64(NumReplicas*len(owners))
}

// The hash functions are written out, rather than taken from hash/maphash
// or a library, so that placement is the same in every process and every
// Go version.

// mix64 is MurmurHash3's 64-bit finalizer (as gizzard.Hash uses): a
// bijection of uint64 in which every input bit affects every output bit.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// ownerHash is the position of owner on the ring with the given seed.
func ownerHash(seed, owner uint64) uint64 {
	return mix64(mix64(owner) ^ seed)
}

// pointHash is the position of node's virtual node v on the ring with the
// given seed: FNV-1a 64 of the node id, mixed with the seed and v.
func pointHash(seed uint64, node string, v int) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(node); i++ {
		h ^= uint64(node[i])
		h *= 1099511628211
	}
	return mix64(mix64(h^seed) + uint64(v)*0x9e3779b97f4a7c15)
}
