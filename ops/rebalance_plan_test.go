package ops

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/aviarydb/aviary/gizzard"
)

// rbLeaf is a physical shard of a test layout; wrap puts it under a
// write_only shard of that id instead of directly under its root.
type rbLeaf struct {
	id, node string
	size     uint64
	wrap     string
}

// rbTree is a replicating root and its leaves.
type rbTree struct {
	root   string
	leaves []rbLeaf
}

// rebalanceLayout builds a valid map of nodes and trees, and the sizes of
// its physical shards.
func rebalanceLayout(t *testing.T, nodes []string, trees ...rbTree) (*gizzard.Map, map[string]uint64) {
	t.Helper()
	m := gizzard.NewMap()
	sizes := map[string]uint64{}
	for _, n := range nodes {
		m.Nodes[n] = gizzard.Node{ID: n}
	}
	for _, tr := range trees {
		root := gizzard.Shard{ID: tr.root, Kind: gizzard.KindReplicating}
		for _, l := range tr.leaves {
			m.Shards[l.id] = gizzard.Shard{ID: l.id, Kind: gizzard.KindPhysical, Node: l.node}
			sizes[l.id] = l.size
			child := l.id
			if l.wrap != "" {
				m.Shards[l.wrap] = gizzard.Shard{ID: l.wrap, Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: l.id, Weight: 1}}}
				child = l.wrap
			}
			root.Children = append(root.Children, gizzard.Link{Child: child, Weight: 1})
		}
		m.Shards[tr.root] = root
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m, sizes
}

// singles returns n one-leaf trees rep-i over p-i on node, each of size.
func singles(from, n int, node string, size uint64) []rbTree {
	var out []rbTree
	for i := from; i < from+n; i++ {
		out = append(out, rbTree{fmt.Sprintf("rep-%d", i), []rbLeaf{{id: fmt.Sprintf("p-%d", i), node: node, size: size}}})
	}
	return out
}

// checkMoves replays moves on m's layout, failing on any that breaks the
// planner's rules, and returns the shards and bytes per node after them.
func checkMoves(t *testing.T, m *gizzard.Map, sizes map[string]uint64, busy map[string]bool, moves []move) (map[string]int, map[string]uint64) {
	t.Helper()
	parent := parents(m)
	nodeOf := map[string]string{}
	for id, sh := range m.Shards {
		if sh.Kind == gizzard.KindPhysical {
			nodeOf[id] = sh.Node
		}
	}
	moved := map[string]bool{}
	for i, mv := range moves {
		sh, ok := m.Shards[mv.Shard]
		switch {
		case !ok || sh.Kind != gizzard.KindPhysical:
			t.Fatalf("move %d (%s): not a physical shard", i, mv)
		case parent[mv.Shard] != mv.Root || m.Shards[mv.Root].Kind != gizzard.KindReplicating:
			t.Fatalf("move %d (%s): root is not the shard's replicating parent", i, mv)
		case busy[mv.Shard]:
			t.Fatalf("move %d (%s): the shard is busy", i, mv)
		case moved[mv.Shard]:
			t.Fatalf("move %d (%s): the shard moves twice", i, mv)
		case nodeOf[mv.Shard] != mv.From || mv.From == mv.To:
			t.Fatalf("move %d (%s): the shard is on %s", i, mv, nodeOf[mv.Shard])
		case mv.Bytes != sizes[mv.Shard]:
			t.Fatalf("move %d (%s): the shard has %d bytes", i, mv, sizes[mv.Shard])
		}
		if _, ok := m.Nodes[mv.To]; !ok {
			t.Fatalf("move %d (%s): no such node", i, mv)
		}
		for _, l := range leavesUnder(m, treeRoot(parent, mv.Root)) {
			if nodeOf[l.ID] == mv.To {
				t.Fatalf("move %d (%s): %s of the same tree is already on %s", i, mv, l.ID, mv.To)
			}
		}
		nodeOf[mv.Shard], moved[mv.Shard] = mv.To, true
	}
	counts, bytes := map[string]int{}, map[string]uint64{}
	for n := range m.Nodes {
		counts[n], bytes[n] = 0, 0
	}
	for id, n := range nodeOf {
		counts[n]++
		bytes[n] += sizes[id]
	}
	return counts, bytes
}

// spreadOf returns the largest minus the smallest value of v.
func spreadOf[V int | uint64](v map[string]V) V {
	vals := slices.Collect(func(yield func(V) bool) {
		for _, x := range v {
			if !yield(x) {
				return
			}
		}
	})
	return slices.Max(vals) - slices.Min(vals)
}

func atMost(v uint64) *uint64 { return &v }

func TestRebalancePlan(t *testing.T) {
	const mb = 1_000_000
	three := []string{"n1", "n2", "n3"}
	replicas := func(n int) []rbTree {
		// n trees of three replicas on n1, n2 and n3.
		var out []rbTree
		for i := range n {
			tr := rbTree{root: fmt.Sprintf("rep-%d", i)}
			for _, node := range three {
				tr.leaves = append(tr.leaves, rbLeaf{id: fmt.Sprintf("p-%d-%s", i, node), node: node, size: mb})
			}
			out = append(out, tr)
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		nodes     []string
		trees     []rbTree
		busy      []string
		maxMoves  int
		moves     int     // the number of moves, -1 for any
		counts    []int   // sorted shards per node after the moves
		maxSpread *uint64 // most bytes between two nodes after the moves, if set
		notes     []string
	}{
		{
			name:  "balanced",
			nodes: three,
			trees: slices.Concat(singles(0, 2, "n1", mb), singles(2, 2, "n2", mb), singles(4, 2, "n3", mb)),
			moves: 0, counts: []int{2, 2, 2},
		},
		{
			name:  "eight on one of three",
			nodes: three,
			trees: singles(0, 8, "n1", 0),
			moves: 5, counts: []int{2, 3, 3},
		},
		{
			name:  "empty nodes count",
			nodes: []string{"n1", "n2", "n3", "n4", "n5"},
			trees: replicas(4), // 4, 4, 4, 0, 0
			moves: 4, counts: []int{2, 2, 2, 3, 3}, maxSpread: atMost(mb),
		},
		{
			name:  "replicas of a tree stay on distinct nodes",
			nodes: []string{"n1", "n2", "n3", "n4"},
			trees: replicas(1), // 1, 1, 1, 0: already within one
			moves: 0, counts: []int{0, 1, 1, 1},
		},
		{
			name:  "busy shards stay",
			nodes: []string{"n1", "n2"},
			trees: singles(0, 4, "n1", mb),
			busy:  []string{"p-0", "p-1"},
			moves: 2, counts: []int{2, 2},
			notes: []string{"kept p-0 on n1: busy", "kept p-1 on n1: busy"},
		},
		{
			name:  "busy shards block",
			nodes: []string{"n1", "n2"},
			trees: singles(0, 4, "n1", mb),
			busy:  []string{"p-0", "p-1", "p-2"},
			moves: 1, counts: []int{1, 3},
			notes: []string{"shard counts stay 2 apart"},
		},
		{
			name:  "the tree's replica blocks",
			nodes: []string{"n1", "n2"},
			// c has replicas on both nodes; a and b are busy.
			trees: []rbTree{
				{"rep-a", []rbLeaf{{id: "a", node: "n1"}}},
				{"rep-b", []rbLeaf{{id: "b", node: "n1"}}},
				{"rep-c", []rbLeaf{{id: "c1", node: "n1"}, {id: "c2", node: "n2"}}},
			},
			busy:  []string{"a", "b"},
			moves: 0, counts: []int{1, 3},
			notes: []string{"shard counts stay 2 apart"},
		},
		{
			name:  "wrapped shard skipped",
			nodes: three,
			trees: []rbTree{
				{"rep-0", []rbLeaf{{id: "p-0", node: "n1", wrap: "p-0-wo"}, {id: "p-1", node: "n2"}}},
				{"rep-2", []rbLeaf{{id: "p-2", node: "n1"}}},
				{"rep-3", []rbLeaf{{id: "p-3", node: "n1"}}},
			},
			moves: 1, counts: []int{1, 1, 2},
			notes: []string{"skipped p-0 on n1: under write_only shard p-0-wo"},
		},
		{
			name:  "bytes by swapping with equal counts",
			nodes: []string{"n1", "n2"},
			trees: slices.Concat(singles(0, 2, "n1", 10*mb), singles(2, 2, "n2", mb)),
			moves: 2, counts: []int{2, 2}, maxSpread: atMost(0),
		},
		{
			name:  "bytes by moves and swaps",
			nodes: three,
			// 30, 3 and 2 MB on 3, 3 and 2 shards.
			trees: slices.Concat(singles(0, 3, "n1", 10*mb), singles(3, 3, "n2", mb), singles(6, 2, "n3", mb)),
			moves: -1, counts: []int{2, 3, 3}, maxSpread: atMost(mb),
		},
		{
			name:  "bytes after counts",
			nodes: three,
			// All on n1; the big ones should spread out.
			trees: slices.Concat(singles(0, 3, "n1", 20*mb), singles(3, 6, "n1", mb)),
			moves: -1, counts: []int{3, 3, 3}, maxSpread: atMost(2 * mb),
		},
		{
			name:  "small differences are not worth a move",
			nodes: []string{"n1", "n2"},
			trees: slices.Concat(singles(0, 2, "n1", 100*mb), singles(2, 1, "n2", 100*mb), singles(3, 1, "n2", 96*mb)),
			moves: 0, counts: []int{2, 2}, maxSpread: atMost(4 * mb),
		},
		{
			name:     "max moves",
			nodes:    three,
			trees:    singles(0, 8, "n1", 0),
			maxMoves: 2,
			moves:    2, counts: []int{1, 1, 6},
			notes: []string{"stopped at the limit of 2 moves"},
		},
		{
			name:     "max moves not reached",
			nodes:    three,
			trees:    singles(0, 8, "n1", 0),
			maxMoves: 5,
			moves:    5, counts: []int{2, 3, 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, sizes := rebalanceLayout(t, tc.nodes, tc.trees...)
			busy := map[string]bool{}
			for _, id := range tc.busy {
				busy[id] = true
			}
			moves, notes := planRebalance(m, sizes, busy, tc.maxMoves)
			t.Logf("moves: %v", moves)
			t.Logf("notes: %q", notes)
			counts, bytes := checkMoves(t, m, sizes, busy, moves)
			if tc.moves >= 0 && len(moves) != tc.moves {
				t.Errorf("%d moves, want %d", len(moves), tc.moves)
			}
			if tc.maxMoves > 0 && len(moves) > tc.maxMoves {
				t.Errorf("%d moves, over the limit of %d", len(moves), tc.maxMoves)
			}
			got := slices.Sorted(func(yield func(int) bool) {
				for _, c := range counts {
					if !yield(c) {
						return
					}
				}
			})
			if !slices.Equal(got, tc.counts) {
				t.Errorf("shards per node %v, want %v", got, tc.counts)
			}
			if s := spreadOf(bytes); tc.maxSpread != nil && s > *tc.maxSpread {
				t.Errorf("bytes spread %d, want at most %d (bytes %v)", s, *tc.maxSpread, bytes)
			}
			all := strings.Join(notes, "\n")
			for _, want := range tc.notes {
				if !strings.Contains(all, want) {
					t.Errorf("notes %q lack %q", notes, want)
				}
			}
			if tc.maxMoves == 0 || len(moves) < tc.maxMoves {
				if strings.Contains(all, "limit") {
					t.Errorf("notes speak of a limit that was not reached: %q", notes)
				}
			}
			if len(notes) == 0 || !strings.HasPrefix(notes[len(notes)-1], fmt.Sprintf("after %d move(s)", len(moves))) {
				t.Errorf("the last note should sum up the layout: %q", notes)
			}
			// Same input, same plan; m is not changed.
			again, againNotes := planRebalance(m, sizes, busy, tc.maxMoves)
			if !reflect.DeepEqual(again, moves) || !reflect.DeepEqual(againNotes, notes) {
				t.Errorf("a second plan differs:\n%v\n%v", moves, again)
			}
			if err := m.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRebalanceNoNodes(t *testing.T) {
	m, sizes := rebalanceLayout(t, []string{"n1"}, singles(0, 3, "n1", 1)...)
	moves, notes := planRebalance(m, sizes, nil, 0)
	if len(moves) != 0 || len(notes) != 1 || !strings.Contains(notes[0], "nothing to balance") {
		t.Errorf("one node: moves %v, notes %q", moves, notes)
	}
	moves, notes = planRebalance(gizzard.NewMap(), nil, nil, 0)
	if len(moves) != 0 || len(notes) != 1 {
		t.Errorf("empty map: moves %v, notes %q", moves, notes)
	}
}

func TestRebalanceNestedTrees(t *testing.T) {
	// top replicates over rep-a (a on n1) and rep-b (b on n2): a and b are
	// replicas of the same data, so a must not go to n2.
	m, sizes := rebalanceLayout(t, []string{"n1", "n2"},
		rbTree{"rep-a", []rbLeaf{{id: "a", node: "n1"}}},
		rbTree{"rep-b", []rbLeaf{{id: "b", node: "n2"}}},
		rbTree{"rep-x", []rbLeaf{{id: "x", node: "n1"}}},
		rbTree{"rep-y", []rbLeaf{{id: "y", node: "n1"}}},
	)
	m.Shards["top"] = gizzard.Shard{ID: "top", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "rep-a", Weight: 1}, {Child: "rep-b", Weight: 1}}}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	// Only a is movable: x and y are busy. n1 has 3, n2 1.
	busy := map[string]bool{"x": true, "y": true}
	moves, notes := planRebalance(m, sizes, busy, 0)
	checkMoves(t, m, sizes, busy, moves)
	if len(moves) != 0 || !strings.Contains(strings.Join(notes, "\n"), "shard counts stay 2 apart") {
		t.Errorf("moves %v, want none; notes %q", moves, notes)
	}

	// With a third node, a goes there, as a child of rep-a.
	m.Nodes["n3"] = gizzard.Node{ID: "n3"}
	moves, notes = planRebalance(m, sizes, busy, 0)
	checkMoves(t, m, sizes, busy, moves)
	if len(moves) != 1 || moves[0].Shard != "a" || moves[0].To != "n3" || moves[0].Root != "rep-a" {
		t.Errorf("moves %v, want a (rep-a) n1 → n3; notes %q", moves, notes)
	}
}

func TestRebalanceMoveString(t *testing.T) {
	mv := move{Root: "rep-003", Shard: "default-003", From: "node-1", To: "node-2", Bytes: 12_000_000}
	if got, want := mv.String(), "move default-003 (rep-003) node-1 → node-2, 12.0 MB"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := (move{Root: "r", Shard: "s", From: "a", To: "b"}).String(); got != "move s (r) a → b, 0 B" {
		t.Errorf("empty shard: %q", got)
	}
}
