package gizzard

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"reflect"
	"slices"
	"testing"
)

func TestHash(t *testing.T) {
	fnv64a := func(b []byte) uint64 {
		h := fnv.New64a()
		h.Write(b)
		return h.Sum64()
	}
	for _, key := range []string{"", "a", "foobar"} {
		if got, want := Hash([]byte(key)), fmix64(fnv64a([]byte(key))); got != want {
			t.Errorf("Hash(%q) = %#x, want %#x", key, got, want)
		}
		if got, want := hashString(key), fnv64a([]byte(key)); got != want {
			t.Errorf("hashString(%q) = %#x, want %#x", key, got, want)
		}
	}
	for _, owner := range []uint64{0, 1, 42, 1 << 40, math.MaxUint64} {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], owner)
		if got, want := OwnerHash(owner), fmix64(fnv64a(b[:])); got != want {
			t.Errorf("OwnerHash(%d) = %#x, want %#x", owner, got, want)
		}
	}
}

// TestHashSpreadsShortKeys checks that short keys fill the four quarters of
// the hash space evenly: forwardings split the space by its high bits.
func TestHashSpreadsShortKeys(t *testing.T) {
	const n = 20000
	var quarters [4]int
	for i := range n {
		quarters[Hash([]byte(fmt.Sprintf("k%d", i)))>>62]++
	}
	for q, c := range quarters {
		if c < n/4*9/10 || c > n/4*11/10 {
			t.Errorf("quarter %d holds %d of %d short keys: %v", q, c, n, quarters)
		}
	}
}

func TestLookup(t *testing.T) {
	m := NewMap()
	mustApply(t, m,
		addNode("n1"),
		createTable("posts", TableContent), createTable("late", TableContent), createTable("empty", TableIndex),
		createPhysical("a", "n1"), createPhysical("b", "n1"), createPhysical("c", "n1"), createPhysical("d", "n1"),
		// Set out of order: Apply keeps each table's forwardings sorted.
		setFwd("posts", 1<<63, "c"), setFwd("posts", 0, "a"), setFwd("posts", 1<<62, "b"),
		setFwd("late", 100, "d"),
	)
	if got := m.Forwardings["posts"]; !slices.IsSortedFunc(got, func(x, y Forwarding) int { return cmp.Compare(x.Base, y.Base) }) || len(got) != 3 {
		t.Fatalf("forwardings of posts: %+v", got)
	}
	for _, tc := range []struct {
		table    string
		h        uint64
		wantRoot string
		wantErr  error
	}{
		{"posts", 0, "a", nil},
		{"posts", 1<<62 - 1, "a", nil},
		{"posts", 1 << 62, "b", nil},
		{"posts", 1<<63 - 1, "b", nil},
		{"posts", 1 << 63, "c", nil},
		{"posts", math.MaxUint64, "c", nil},
		{"late", 99, "", ErrNoForwarding},
		{"late", 100, "d", nil},
		{"late", math.MaxUint64, "d", nil},
		{"empty", 7, "", ErrNoForwarding},
		{"missing", 7, "", ErrNoTable},
	} {
		f, err := m.Lookup(tc.table, tc.h)
		if tc.wantErr != nil {
			wantErr(t, err, tc.wantErr, tc.table)
			continue
		}
		if err != nil || f.Root != tc.wantRoot || f.Table != tc.table || f.Base > tc.h {
			t.Errorf("Lookup(%q, %#x) = %+v, %v; want root %q", tc.table, tc.h, f, err, tc.wantRoot)
		}
	}
}

// routeTrees holds every tree the routing tests use, keyed by root; all
// live in one valid map.
func routeMap(t *testing.T) *Map {
	return treeMap(t,
		// Plain kinds at the root.
		phys("p", "n1"),
		repl("rep", link("rep.a", 1), link("rep.b", 1)), phys("rep.a", "n1"), phys("rep.b", "n2"),
		wrap(KindReadOnly, "ro", "ro.p"), phys("ro.p", "n1"),
		wrap(KindWriteOnly, "wo", "wo.p"), phys("wo.p", "n1"),
		wrap(KindBlocked, "bl", "bl.p"), phys("bl.p", "n1"),
		wrap(KindBlackHole, "bh", "bh.p"), phys("bh.p", "n1"),
		// Replicating over a write_only over a physical (a replica being
		// filled), beside a plain replica.
		repl("rwo", link("rwo.w", 1), link("rwo.a", 1)), wrap(KindWriteOnly, "rwo.w", "rwo.b"), phys("rwo.a", "n1"), phys("rwo.b", "n2"),
		// Replicating with a blocked child.
		repl("rbl", link("rbl.a", 1), link("rbl.x", 1)), phys("rbl.a", "n1"), wrap(KindBlocked, "rbl.x", "rbl.b"), phys("rbl.b", "n2"),
		// Black hole under replicating.
		repl("rbh", link("rbh.a", 1), link("rbh.x", 1)), phys("rbh.a", "n1"), wrap(KindBlackHole, "rbh.x", "rbh.b"), phys("rbh.b", "n2"),
		// Read-only root over a replicating pair.
		wrap(KindReadOnly, "ror", "ror.r"), repl("ror.r", link("ror.a", 1), link("ror.b", 2)), phys("ror.a", "n1"), phys("ror.b", "n2"),
		// Nothing readable: a blocked and a write-only child.
		repl("rnone", link("rnone.x", 1), link("rnone.w", 1)), wrap(KindBlocked, "rnone.x", "rnone.a"), wrap(KindWriteOnly, "rnone.w", "rnone.b"), phys("rnone.a", "n1"), phys("rnone.b", "n2"),
		// Nothing readable and nothing blocked on a read path: a blocked
		// shard behind a write_only is never read.
		repl("rdark", link("rdark.h", 1), link("rdark.w", 1)), wrap(KindBlackHole, "rdark.h", "rdark.a"), wrap(KindWriteOnly, "rdark.w", "rdark.x"), wrap(KindBlocked, "rdark.x", "rdark.b"), phys("rdark.a", "n1"), phys("rdark.b", "n2"),
		// Nested replicating, three deep, with a read_only replica.
		repl("nest", link("nest.r", 1), link("nest.c", 1), link("nest.ro", 1)),
		repl("nest.r", link("nest.a", 1), link("nest.b", 1)), phys("nest.a", "n1"), phys("nest.b", "n2"), phys("nest.c", "n3"),
		wrap(KindReadOnly, "nest.ro", "nest.d"), phys("nest.d", "n3"),
	)
}

func TestPlanWrite(t *testing.T) {
	m := routeMap(t)
	leaf := func(s, n string) Leaf { return Leaf{Shard: s, Node: n} }
	rej := func(s string, k Kind) Rejection {
		return Rejection{Shard: s, Kind: k, Reason: string(k) + ` shard "` + s + `" refuses writes`}
	}
	for _, tc := range []struct {
		root string
		want WritePlan
		err  error
	}{
		{root: "p", want: WritePlan{Targets: []Leaf{leaf("p", "n1")}}},
		{root: "rep", want: WritePlan{Targets: []Leaf{leaf("rep.a", "n1"), leaf("rep.b", "n2")}}},
		{root: "ro", want: WritePlan{Rejected: []Rejection{rej("ro", KindReadOnly)}}},
		{root: "wo", want: WritePlan{Targets: []Leaf{leaf("wo.p", "n1")}}},
		{root: "bl", want: WritePlan{Rejected: []Rejection{rej("bl", KindBlocked)}}},
		{root: "bh", want: WritePlan{Dropped: true}},
		{root: "rwo", want: WritePlan{Targets: []Leaf{leaf("rwo.a", "n1"), leaf("rwo.b", "n2")}}},
		{root: "rbl", want: WritePlan{Targets: []Leaf{leaf("rbl.a", "n1")}, Rejected: []Rejection{rej("rbl.x", KindBlocked)}}},
		{root: "rbh", want: WritePlan{Targets: []Leaf{leaf("rbh.a", "n1")}, Dropped: true}},
		{root: "ror", want: WritePlan{Rejected: []Rejection{rej("ror", KindReadOnly)}}},
		{root: "rnone", want: WritePlan{Targets: []Leaf{leaf("rnone.b", "n2")}, Rejected: []Rejection{rej("rnone.x", KindBlocked)}}},
		{root: "rdark", want: WritePlan{Rejected: []Rejection{rej("rdark.x", KindBlocked)}, Dropped: true}},
		{root: "nest", want: WritePlan{
			Targets:  []Leaf{leaf("nest.a", "n1"), leaf("nest.b", "n2"), leaf("nest.c", "n3")},
			Rejected: []Rejection{rej("nest.ro", KindReadOnly)},
		}},
		{root: "nest.r", want: WritePlan{Targets: []Leaf{leaf("nest.a", "n1"), leaf("nest.b", "n2")}}},
		{root: "missing", err: ErrNoShard},
	} {
		t.Run(tc.root, func(t *testing.T) {
			got, err := m.PlanWrite(tc.root)
			if tc.err != nil {
				wantErr(t, err, tc.err, tc.root)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("PlanWrite(%q) =\n %+v\nwant\n %+v", tc.root, got, tc.want)
			}
		})
	}
}

func TestPlanRead(t *testing.T) {
	m := routeMap(t)
	for _, tc := range []struct {
		root string
		want []string // candidates, in any order (TestPlanReadWeights checks order)
		err  error
	}{
		{root: "p", want: []string{"p"}},
		{root: "rep", want: []string{"rep.a", "rep.b"}},
		{root: "ro", want: []string{"ro.p"}},
		{root: "wo", err: ErrNoReadable},
		{root: "bl", err: ErrBlocked},
		{root: "bh", err: ErrNoReadable},
		{root: "rwo", want: []string{"rwo.a"}},
		{root: "rbl", want: []string{"rbl.a"}},
		{root: "rbh", want: []string{"rbh.a"}},
		{root: "ror", want: []string{"ror.a", "ror.b"}},
		{root: "rnone", err: ErrBlocked},
		{root: "rdark", err: ErrNoReadable},
		{root: "nest", want: []string{"nest.a", "nest.b", "nest.c", "nest.d"}},
		{root: "missing", err: ErrNoShard},
	} {
		t.Run(tc.root, func(t *testing.T) {
			for pick := uint64(0); pick < 50; pick++ {
				got, err := m.PlanRead(tc.root, pick)
				if tc.err != nil {
					wantErr(t, err, tc.err, tc.root)
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, l := range got {
					if l.Node != m.Shards[l.Shard].Node {
						t.Fatalf("leaf %+v: node of %q is %q", l, l.Shard, m.Shards[l.Shard].Node)
					}
					ids = append(ids, l.Shard)
				}
				slices.Sort(ids)
				if !slices.Equal(ids, tc.want) {
					t.Fatalf("PlanRead(%q, %d) = %v, want %v in some order", tc.root, pick, ids, tc.want)
				}
			}
		})
	}
}

// TestPlanReadNesting checks that a nested replicating child's candidates
// stay together: the order is a depth-first walk of the children in their
// weighted order.
func TestPlanReadNesting(t *testing.T) {
	m := routeMap(t)
	for pick := uint64(0); pick < 200; pick++ {
		got, err := m.PlanRead("nest", pick)
		if err != nil {
			t.Fatal(err)
		}
		var want []Leaf
		for _, l := range readOrder(m.Shards["nest"].Children, pick) {
			sub, err := m.PlanRead(l.Child, pick)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, sub...)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("pick %d: %v, want %v", pick, got, want)
		}
	}
}

func TestPlanReadWeights(t *testing.T) {
	for _, tc := range []struct {
		name     string
		weights  []int
		wantLo   []float64 // per child, bounds on the share of picks where it comes first
		wantHigh []float64
	}{
		{"3:1", []int{3, 1}, []float64{0.65, 0.15}, []float64{0.85, 0.35}},
		{"1:3", []int{1, 3}, []float64{0.15, 0.65}, []float64{0.35, 0.85}},
		{"1:1:1", []int{1, 1, 1}, []float64{0.28, 0.28, 0.28}, []float64{0.39, 0.39, 0.39}},
		{"1:2:5", []int{1, 2, 5}, []float64{0.08, 0.19, 0.57}, []float64{0.17, 0.31, 0.68}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shards := []Shard{{ID: "r", Kind: KindReplicating}}
			ids := make([]string, len(tc.weights))
			for i, w := range tc.weights {
				ids[i] = "t-0-" + string(rune('a'+i))
				shards[0].Children = append(shards[0].Children, link(ids[i], w))
				shards = append(shards, phys(ids[i], "n1"))
			}
			m := treeMap(t, shards...)
			const picks = 10000
			first := map[string]int{}
			for pick := uint64(0); pick < picks; pick++ {
				got, err := m.PlanRead("r", pick)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(ids) {
					t.Fatalf("pick %d: %d candidates, want %d", pick, len(got), len(ids))
				}
				again, _ := m.PlanRead("r", pick)
				if !reflect.DeepEqual(got, again) {
					t.Fatalf("pick %d: order %v then %v", pick, got, again)
				}
				first[got[0].Shard]++
			}
			for i, id := range ids {
				share := float64(first[id]) / picks
				if share < tc.wantLo[i] || share > tc.wantHigh[i] {
					t.Errorf("%s (weight %d) first in %.3f of picks, want [%.2f, %.2f]", id, tc.weights[i], share, tc.wantLo[i], tc.wantHigh[i])
				}
			}
		})
	}
}

// TestReadOrderStable checks the rendezvous property: removing a child
// leaves the relative order of the others unchanged.
func TestReadOrderStable(t *testing.T) {
	links := []Link{link("a", 1), link("b", 2), link("c", 3), link("d", 1)}
	for pick := uint64(0); pick < 500; pick++ {
		full := readOrder(links, pick)
		fewer := readOrder(links[1:], pick)
		var want []Link
		for _, l := range full {
			if l.Child != "a" {
				want = append(want, l)
			}
		}
		if !reflect.DeepEqual(fewer, want) {
			t.Fatalf("pick %d: without a %v, want %v", pick, fewer, want)
		}
	}
}

// TestRoutingInvalidMap checks that routing a map that breaks the
// invariants reports it instead of looping or panicking.
func TestRoutingInvalidMap(t *testing.T) {
	cyclic := NewMap()
	cyclic.Shards["a"] = repl("a", link("b", 1))
	cyclic.Shards["b"] = repl("b", link("a", 1))
	dangling := NewMap()
	dangling.Shards["a"] = repl("a", link("gone", 1))
	for name, m := range map[string]*Map{"cyclic": cyclic, "dangling": dangling} {
		if _, err := m.PlanWrite("a"); !errors.Is(err, ErrInvalidMap) {
			t.Errorf("%s: PlanWrite: %v, want ErrInvalidMap", name, err)
		}
		if _, err := m.PlanRead("a", 1); !errors.Is(err, ErrInvalidMap) {
			t.Errorf("%s: PlanRead: %v, want ErrInvalidMap", name, err)
		}
	}
}

func TestLeavesOnNodeAndRoots(t *testing.T) {
	m := baseMap(t)
	mustApply(t, m, createPhysical("z", "n1"), createPhysical("q", "n3"))
	for _, tc := range []struct {
		node string
		want []string
	}{
		{"n1", []string{"p1", "z"}},
		{"n2", []string{"p2"}},
		{"n3", []string{"q"}},
		{"n9", nil},
	} {
		if got := m.LeavesOnNode(tc.node); !slices.Equal(got, tc.want) {
			t.Errorf("LeavesOnNode(%q) = %v, want %v", tc.node, got, tc.want)
		}
	}
	if got, want := m.Roots(), []string{"q", "r", "z"}; !slices.Equal(got, want) {
		t.Errorf("Roots() = %v, want %v", got, want)
	}
	for _, tc := range []struct{ id, want string }{{"p1", "r"}, {"p2", "r"}, {"r", ""}, {"missing", ""}} {
		if got := m.Parent(tc.id); got != tc.want {
			t.Errorf("Parent(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
}
