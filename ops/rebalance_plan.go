package ops

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/aviarydb/aviary/gizzard"
)

// rebalanceMinGain is the least part of the mean bytes per node by which a
// move must narrow the bytes spread to be worth its copy.
const rebalanceMinGain = 0.05

// move is one step of a rebalance: copy the physical shard Shard, a child
// of the replicating shard Root, from node From to node To (where it
// replaces the original).
type move struct {
	Root  string `json:"root"`
	Shard string `json:"shard"`
	From  string `json:"from"`
	To    string `json:"to"`
	Bytes uint64 `json:"bytes"`
}

// String formats mv as "move default-003 (rep-003) node-1 → node-2, 12.0 MB".
func (mv move) String() string {
	return fmt.Sprintf("move %s (%s) %s → %s, %s", mv.Shard, mv.Root, mv.From, mv.To, decimalBytes(float64(mv.Bytes)))
}

// rebalanceShard is a movable physical shard in the planner's model.
type rebalanceShard struct {
	id    string
	root  string // its replicating parent
	tree  string // the root of its whole tree: every leaf there is a replica
	node  string // where it is now in the model
	bytes int64
	moved bool // a shard moves at most once per plan
}

// rebalanceModel is the planner's picture of the site, updated by each
// planned move before the next is chosen.
type rebalanceModel struct {
	nodes  []string                  // every node of the map, sorted
	count  map[string]int            // physical shards per node
	bytes  map[string]int64          // bytes per node
	held   map[string]map[string]int // tree -> node -> leaves of the tree there
	shards []*rebalanceShard         // the movable shards, by id
	moves  []move
}

// planRebalance plans moves of physical shards between the nodes of m,
// without changing m: first to even out the number of physical shards per
// node (until the most and the fewest differ by at most one), then the
// bytes per node, as long as a move, or a swap of two shards between two
// nodes, narrows the spread between the fullest and the emptiest node by
// at least 5% of the mean per move, without unbalancing the counts again.
//
// sizes holds the bytes of each physical shard (missing means 0); busy
// names physical shards that must stay where they are, such as those in a
// migration. Only a physical shard whose parent is a replicating shard
// moves (as a replica of that parent); one under a wrapper (write_only,
// ...) or without a parent stays, with a note, but still counts on its
// node, as busy ones do. A shard never goes to a node that already holds a
// leaf of its tree (leavesUnder its tree's root: the replicating parent,
// or the root above it when trees nest), and moves at most once. Every node
// of m counts, those without shards too.
//
// It returns the moves in order, each planned on the layout the earlier
// ones leave, at most maxMoves of them unless maxMoves is 0, and notes that
// say what was skipped and why planning stopped. Ties go to the lower ids,
// so the plan is the same for the same input.
func planRebalance(m *gizzard.Map, sizes map[string]uint64, busy map[string]bool, maxMoves int) ([]move, []string) {
	md, notes := newRebalanceModel(m, sizes, busy)
	if len(md.nodes) < 2 {
		return nil, append(notes, fmt.Sprintf("%d node(s) in the map: nothing to balance", len(md.nodes)))
	}
	if len(md.shards) == 0 {
		notes = append(notes, "no shard can move")
	}
	limited := func(need int) bool { return maxMoves > 0 && len(md.moves)+need > maxMoves }
	limitNote := fmt.Sprintf("stopped at the limit of %d moves; more would balance further", maxMoves)

	// Counts first.
	for {
		sh, to, ok := md.bestCountMove()
		if !ok {
			break
		}
		if limited(1) {
			return md.moves, append(notes, limitNote, md.summary())
		}
		md.apply(sh, to)
	}
	allowed := max(md.countSpread(), 1)
	if allowed > 1 {
		notes = append(notes, fmt.Sprintf("shard counts stay %d apart: no shard on a fuller node can go to an emptier one (it is busy, not under a replicating shard, or its tree already has a replica there)", allowed))
	}

	// Then bytes, keeping the counts within allowed.
	var total int64
	for _, n := range md.nodes {
		total += md.bytes[n]
	}
	mean := float64(total) / float64(len(md.nodes))
	if total > 0 {
		for {
			c, ok := md.bestByteStep(allowed, mean)
			if !ok {
				break
			}
			if limited(len(c.shards)) {
				return md.moves, append(notes, limitNote, md.summary())
			}
			for i, sh := range c.shards {
				md.apply(sh, c.to[i])
			}
		}
		if lo, hi := md.byteRange(); float64(hi-lo) >= rebalanceMinGain*mean {
			notes = append(notes, fmt.Sprintf("no further move narrows the bytes spread by %.0f%% of the mean without unbalancing the shard counts", rebalanceMinGain*100))
		}
	}
	return md.moves, append(notes, md.summary())
}

// newRebalanceModel builds the model of m, with notes on the shards that
// cannot move.
func newRebalanceModel(m *gizzard.Map, sizes map[string]uint64, busy map[string]bool) (*rebalanceModel, []string) {
	md := &rebalanceModel{
		nodes: sortedNodeIDs(m),
		count: map[string]int{},
		bytes: map[string]int64{},
		held:  map[string]map[string]int{},
	}
	parent := parents(m)
	var notes []string
	for _, id := range slices.Sorted(maps.Keys(m.Shards)) {
		sh := m.Shards[id]
		if sh.Kind != gizzard.KindPhysical {
			continue
		}
		if _, ok := m.Nodes[sh.Node]; !ok {
			notes = append(notes, fmt.Sprintf("skipped %s: its node %q is not in the map", id, sh.Node))
			continue
		}
		b := int64(min(sizes[id], math.MaxInt64/4)) // room to add them up
		md.count[sh.Node]++
		md.bytes[sh.Node] += b
		p, hasParent := parent[id]
		switch {
		case busy[id]:
			notes = append(notes, fmt.Sprintf("kept %s on %s: busy", id, sh.Node))
		case !hasParent:
			notes = append(notes, fmt.Sprintf("skipped %s on %s: it is a tree of its own, not under a replicating shard", id, sh.Node))
		case m.Shards[p].Kind != gizzard.KindReplicating:
			notes = append(notes, fmt.Sprintf("skipped %s on %s: under %s shard %s, not directly under a replicating shard", id, sh.Node, m.Shards[p].Kind, p))
		default:
			md.shards = append(md.shards, &rebalanceShard{id: id, root: p, tree: treeRoot(parent, p), node: sh.Node, bytes: b})
		}
	}
	for _, sh := range md.shards {
		if _, ok := md.held[sh.tree]; ok {
			continue
		}
		held := map[string]int{}
		for _, l := range leavesUnder(m, sh.tree) {
			held[l.Node]++
		}
		md.held[sh.tree] = held
	}
	return md, notes
}

// treeRoot returns the root of the tree holding id.
func treeRoot(parent map[string]string, id string) string {
	seen := map[string]bool{}
	for !seen[id] {
		seen[id] = true
		p, ok := parent[id]
		if !ok {
			break
		}
		id = p
	}
	return id
}

// canPlace reports whether sh may go to node: it is elsewhere, and no leaf
// of its tree is there.
func (md *rebalanceModel) canPlace(sh *rebalanceShard, node string) bool {
	return !sh.moved && sh.node != node && md.held[sh.tree][node] == 0
}

// apply moves sh to node in the model and records the move.
func (md *rebalanceModel) apply(sh *rebalanceShard, to string) {
	from := sh.node
	md.moves = append(md.moves, move{Root: sh.root, Shard: sh.id, From: from, To: to, Bytes: uint64(sh.bytes)})
	md.count[from]--
	md.count[to]++
	md.bytes[from] -= sh.bytes
	md.bytes[to] += sh.bytes
	md.held[sh.tree][from]--
	md.held[sh.tree][to]++
	sh.node, sh.moved = to, true
}

// countSpread returns the most minus the fewest shards on a node.
func (md *rebalanceModel) countSpread() int { return md.countSpreadMoving("", "") }

// countSpreadMoving returns the most minus the fewest shards on a node once
// one has moved from from to to.
func (md *rebalanceModel) countSpreadMoving(from, to string) int {
	lo, hi := math.MaxInt, math.MinInt
	for _, n := range md.nodes {
		c := md.count[n]
		if n == from {
			c--
		}
		if n == to {
			c++
		}
		lo, hi = min(lo, c), max(hi, c)
	}
	return hi - lo
}

// byteRange returns the fewest and the most bytes on a node.
func (md *rebalanceModel) byteRange() (lo, hi int64) {
	lo, hi = math.MaxInt64, math.MinInt64
	for _, n := range md.nodes {
		lo, hi = min(lo, md.bytes[n]), max(hi, md.bytes[n])
	}
	return lo, hi
}

// byteSpread returns the most minus the fewest bytes on a node once from
// has sent d bytes (negative: received) to to.
func (md *rebalanceModel) byteSpread(from, to string, d int64) int64 {
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, n := range md.nodes {
		b := md.bytes[n]
		if n == from {
			b -= d
		}
		if n == to {
			b += d
		}
		lo, hi = min(lo, b), max(hi, b)
	}
	return hi - lo
}

// bestCountMove returns the move that best evens out the shard counts: from
// a node with at least two shards more than the receiving one, the widest
// such gap first, then the move leaving the narrowest bytes spread, then
// the one leaving the two nodes' bytes closest, then the lowest ids.
func (md *rebalanceModel) bestCountMove() (*rebalanceShard, string, bool) {
	gap := 1
	for _, sh := range md.shards {
		for _, n := range md.nodes {
			if g := md.count[sh.node] - md.count[n]; g > gap && md.canPlace(sh, n) {
				gap = g
			}
		}
	}
	if gap < 2 {
		return nil, "", false
	}
	var best *rebalanceShard
	var bestTo string
	var bestSpread, bestPair int64
	for _, sh := range md.shards { // by id
		for _, n := range md.nodes {
			if md.count[sh.node]-md.count[n] != gap || !md.canPlace(sh, n) {
				continue
			}
			spread := md.byteSpread(sh.node, n, sh.bytes)
			pair := absInt64((md.bytes[sh.node] - sh.bytes) - (md.bytes[n] + sh.bytes))
			if best == nil || spread < bestSpread || spread == bestSpread && (pair < bestPair ||
				pair == bestPair && (sh.node < best.node || sh.node == best.node && n < bestTo)) {
				best, bestTo, bestSpread, bestPair = sh, n, spread, pair
			}
		}
	}
	return best, bestTo, true
}

// byteStep is a candidate step of the bytes phase: one move, or a swap of
// two shards between two nodes (two moves).
type byteStep struct {
	shards []*rebalanceShard
	to     []string
	gain   int64 // how much the bytes spread narrows
}

// better reports whether c beats d: more gain per move, then fewer moves
// (ties keep the earlier candidate, found in id order).
func (c byteStep) better(d byteStep) bool {
	if len(d.shards) == 0 {
		return true
	}
	// c.gain/len(c) > d.gain/len(d), without division.
	lc, ld := int64(len(c.shards)), int64(len(d.shards))
	if a, b := c.gain*ld, d.gain*lc; a != b {
		return a > b
	}
	return lc < ld
}

// bestByteStep returns the step that narrows the bytes spread the most per
// move, by at least rebalanceMinGain of mean per move, keeping the count
// spread at most allowed.
func (md *rebalanceModel) bestByteStep(allowed int, mean float64) (byteStep, bool) {
	lo, hi := md.byteRange()
	cur := hi - lo
	worth := func(gain int64, moves int) bool {
		return gain > 0 && float64(gain) >= rebalanceMinGain*mean*float64(moves)
	}
	var best byteStep
	// Single moves: only from a fullest node or to an emptiest one can one
	// narrow the spread.
	for _, sh := range md.shards {
		for _, n := range md.nodes {
			if md.bytes[sh.node] != hi && md.bytes[n] != lo || !md.canPlace(sh, n) {
				continue
			}
			if md.countSpreadMoving(sh.node, n) > allowed {
				continue
			}
			c := byteStep{shards: []*rebalanceShard{sh}, to: []string{n}, gain: cur - md.byteSpread(sh.node, n, sh.bytes)}
			if worth(c.gain, 1) && c.better(best) {
				best = c
			}
		}
	}
	// Swaps between a fullest and an emptiest node keep every count.
	var xs, ys []*rebalanceShard
	for _, sh := range md.shards {
		switch {
		case sh.moved:
		case md.bytes[sh.node] == hi:
			xs = append(xs, sh)
		case md.bytes[sh.node] == lo:
			ys = append(ys, sh)
		}
	}
	for _, x := range xs {
		for _, y := range ys {
			if y.bytes >= x.bytes {
				continue
			}
			a, b := x.node, y.node
			// x goes first, while y is still on b; then y to a, which x
			// has left (x's tree and y's differ, or x could not go to b).
			if !md.canPlace(x, b) || md.held[y.tree][a] != 0 {
				continue
			}
			c := byteStep{shards: []*rebalanceShard{x, y}, to: []string{b, a}, gain: cur - md.byteSpread(a, b, x.bytes-y.bytes)}
			if worth(c.gain, 2) && c.better(best) {
				best = c
			}
		}
	}
	return best, len(best.shards) > 0
}

// summary describes the layout after the planned moves.
func (md *rebalanceModel) summary() string {
	clo, chi := math.MaxInt, math.MinInt
	for _, n := range md.nodes {
		clo, chi = min(clo, md.count[n]), max(chi, md.count[n])
	}
	lo, hi := md.byteRange()
	var total int64
	for _, n := range md.nodes {
		total += md.bytes[n]
	}
	mean := float64(total) / float64(len(md.nodes))
	s := fmt.Sprintf("after %d move(s): %d to %d shards per node, %s to %s per node",
		len(md.moves), clo, chi, decimalBytes(float64(lo)), decimalBytes(float64(hi)))
	if mean > 0 {
		s += fmt.Sprintf(" (spread %.0f%% of the mean)", float64(hi-lo)/mean*100)
	}
	return s
}

func absInt64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
