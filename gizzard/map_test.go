package gizzard

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestNewMapValid(t *testing.T) {
	m := NewMap()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if m.Version != 0 || len(m.Nodes)+len(m.Tables)+len(m.Shards)+len(m.Forwardings)+len(m.Audit) != 0 {
		t.Fatalf("NewMap() = %+v", m)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(m *Map)
		want    string
	}{
		{"node keyed wrong", func(m *Map) { m.Nodes["n9"] = Node{ID: "n8"} }, `node "n8" is keyed "n9"`},
		{"bad node id", func(m *Map) { m.Nodes["n/9"] = Node{ID: "n/9"} }, `node id: name "n/9"`},
		{"table keyed wrong", func(m *Map) { m.Tables["x"] = Table{Name: "y", Kind: TableContent} }, `table "y" is keyed "x"`},
		{"bad table kind", func(m *Map) { m.Tables["x"] = Table{Name: "x", Kind: "blob"} }, `table "x": kind "blob"`},
		{"shard keyed wrong", func(m *Map) { m.Shards["x"] = phys("y", "n1") }, `shard "y" is keyed "x"`},
		{"empty shard id", func(m *Map) { m.Shards[""] = phys("", "n1") }, `shard id: name is empty`},
		{"unknown kind", func(m *Map) { m.Shards["x"] = Shard{ID: "x", Kind: "mirror"} }, `unknown kind "mirror"`},
		{"physical on a missing node", func(m *Map) { m.Shards["x"] = phys("x", "n9") }, `physical shard "x" is on node "n9", which does not exist`},
		{"physical without a node", func(m *Map) { m.Shards["x"] = phys("x", "") }, `physical shard "x" names no node`},
		{"physical with children", func(m *Map) {
			m.Shards["x"] = Shard{ID: "x", Kind: KindPhysical, Node: "n1", Children: []Link{link("p1", 1)}}
		}, `physical shard "x" has 1 children; it takes exactly 0`},
		{"logical on a node", func(m *Map) { s := m.Shards["r"]; s.Node = "n1"; m.Shards["r"] = s }, `replicating shard "r" names node "n1"`},
		{"replicating without children", func(m *Map) { m.Shards["x"] = repl("x") }, `replicating shard "x" has no children`},
		{"wrapper with 2 children", func(m *Map) {
			m.Shards["x"] = Shard{ID: "x", Kind: KindBlocked, Children: []Link{link("a", 1), link("b", 1)}}
			m.Shards["a"], m.Shards["b"] = phys("a", "n1"), phys("b", "n1")
		}, `blocked shard "x" has 2 children; it takes exactly 1`},
		{"dangling child", func(m *Map) { m.Shards["x"] = wrap(KindReadOnly, "x", "gone") }, `shard "x" links to "gone", which does not exist`},
		{"self link", func(m *Map) { m.Shards["x"] = wrap(KindReadOnly, "x", "x") }, `shard "x" links to itself`},
		{"zero weight", func(m *Map) { m.Shards["r"] = repl("r", link("p1", 0), link("p2", 1)) }, `link "r" -> "p1" has weight 0`},
		{"duplicate child", func(m *Map) { m.Shards["r"] = repl("r", link("p1", 1), link("p1", 1), link("p2", 1)) }, `shard "r" links to "p1" twice`},
		{"two parents", func(m *Map) { m.Shards["a"] = wrap(KindWriteOnly, "a", "p1") }, `shard "p1" has two parents, "a" and "r"`},
		{"cycle", func(m *Map) {
			m.Shards["x"] = wrap(KindWriteOnly, "x", "y")
			m.Shards["y"] = repl("y", link("z", 1))
			m.Shards["z"] = wrap(KindReadOnly, "z", "x")
		}, `links form a cycle x -> y -> z -> x`},
		{"forwardings of a missing table", func(m *Map) { m.Forwardings["nope"] = []Forwarding{{"nope", 0, "r"}} }, `forwardings of table "nope", which does not exist`},
		{"forwarding under the wrong table", func(m *Map) { m.Forwardings["timeline"] = []Forwarding{{"posts", 0, "r"}} }, `is listed under table "timeline"`},
		{"forwarding to a missing root", func(m *Map) { m.Forwardings["timeline"] = []Forwarding{{"timeline", 0, "gone"}} }, `root shard "gone" does not exist`},
		{"forwarding to a non-root", func(m *Map) { m.Forwardings["timeline"] = []Forwarding{{"timeline", 0, "p1"}} }, `root shard "p1" has parent "r"`},
		{"overlapping bases", func(m *Map) {
			m.Forwardings["posts"] = []Forwarding{{"posts", 0, "r"}, {"posts", 0, "r"}}
		}, `not sorted by strictly increasing base: 0x0000000000000000 after 0x0000000000000000`},
		{"unsorted bases", func(m *Map) {
			m.Forwardings["posts"] = []Forwarding{{"posts", 9, "r"}, {"posts", 3, "r"}}
		}, `0x0000000000000003 after 0x0000000000000009`},
		{"audit ahead of the version", func(m *Map) { m.Version = 0 }, `audit entry 0 has version 1`},
		{"audit out of order", func(m *Map) { m.Version = 3; m.Audit = append(m.Audit, m.Audit[0]) }, `audit entry 1 has version 1`},
		{"audit time not encodable", func(m *Map) { m.Audit[0].At = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) }, `audit entry 0: time`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMap(t)
			tc.corrupt(m)
			for range 10 { // the same first error every time, whatever the map order
				wantErr(t, m.Validate(), ErrInvalidMap, tc.want)
			}
		})
	}
}

func TestClone(t *testing.T) {
	m := populatedMap(t)
	c := m.Clone()
	if !reflect.DeepEqual(c, m) {
		t.Fatal("clone differs")
	}
	before := mustJSON(t, m)
	// Mutate every level of the clone; m must not change.
	c.Version++
	c.Nodes["n1"] = Node{ID: "n1", GRPCAddr: "changed"}
	c.Tables["posts"] = Table{Name: "posts", Kind: TableIndex}
	c.Shards["r"].Children[0].Weight = 99
	c.Forwardings["posts"][0].Root = "changed"
	c.Audit[0].Who = "changed"
	delete(c.Shards, "p1")
	if after := mustJSON(t, m); after != before {
		t.Fatalf("mutating the clone changed the map:\n%s\n%s", before, after)
	}
	if got := (&Map{}).Clone(); !reflect.DeepEqual(got, &Map{}) {
		t.Fatalf("clone of the zero map = %+v", got)
	}
}

// populatedChanges exercise every op and kind.
func populatedChanges() []Change {
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Minute) }
	steps := [][]Step{
		baseSteps,
		{createPhysical("p3", "n3"), createLogical(KindWriteOnly, "w3", link("p3", 1)), addLink("r", "w3", 2)},
		{setWeight("r", "p2", 5), createTable("likes", TableIndex)},
		{createPhysical("q1", "n1"), createPhysical("q2", "n2"), createLogical(KindReplicating, "q", link("q1", 3), link("q2", 1)),
			createLogical(KindReadOnly, "qro", link("q", 1)), setFwd("posts", 1<<63, "qro"), setFwd("timeline", 0, "qro")},
		{createPhysical("z1", "n3"), createLogical(KindBlackHole, "zbh", link("z1", 1)), createLogical(KindBlocked, "zb"),
			addLink("zb", "zbh", 1), setFwd("likes", 0, "zb")},
		{removeLink("w3", "p3"), replaceChild("r", "w3", "p3"), deleteShard("w3")},
		{addNode("n4"), removeNode("n4")},
		{createPhysical("tmp", "n1"), setFwd("likes", 1<<40, "tmp")},
		{removeFwd("likes", 1<<40, "tmp"), deleteShard("tmp")},
	}
	cs := make([]Change, len(steps))
	for i, s := range steps {
		cs[i] = Change{Steps: s, Who: fmt.Sprintf("op-%d", i), From: "10.0.0.1:4000", At: at(i)}
	}
	return cs
}

func populatedMap(t testing.TB) *Map {
	t.Helper()
	m := NewMap()
	for i, c := range populatedChanges() {
		if err := m.Apply(c); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
	}
	return m
}

func TestJSONRoundTrip(t *testing.T) {
	for name, m := range map[string]*Map{"empty": NewMap(), "populated": populatedMap(t)} {
		t.Run(name, func(t *testing.T) {
			b := mustJSON(t, m)
			var got Map
			if err := json.Unmarshal([]byte(b), &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got, m) {
				t.Fatalf("round trip differs:\n%+v\n%+v", &got, m)
			}
			// As the nameserver restores a snapshot: into a NewMap.
			restored := NewMap()
			if err := json.Unmarshal([]byte(b), restored); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(restored, m) {
				t.Fatalf("restore differs:\n%+v\n%+v", restored, m)
			}
			if err := restored.Validate(); err != nil {
				t.Fatal(err)
			}
			if again := mustJSON(t, &got); again != b {
				t.Fatalf("re-encoding differs:\n%s\n%s", b, again)
			}
		})
	}
}

func TestApplyDeterministic(t *testing.T) {
	a, b, c := NewMap(), NewMap(), NewMap()
	for i, ch := range populatedChanges() {
		if err := a.Apply(ch); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		if err := b.Apply(ch); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		// c gets each change as the raft log carries it, and is restored
		// from a snapshot halfway.
		var wire Change
		if err := json.Unmarshal([]byte(mustJSON(t, ch)), &wire); err != nil {
			t.Fatal(err)
		}
		if err := c.Apply(wire); err != nil {
			t.Fatalf("change %d over the wire: %v", i, err)
		}
		if i == 4 {
			var restored Map
			if err := json.Unmarshal([]byte(mustJSON(t, c)), &restored); err != nil {
				t.Fatal(err)
			}
			c = &restored
		}
	}
	ja, jb, jc := mustJSON(t, a), mustJSON(t, b), mustJSON(t, c)
	if ja != jb || ja != jc {
		t.Fatalf("replicas differ:\n%s\n%s\n%s", ja, jb, jc)
	}
	if a.Version != uint64(len(populatedChanges())) || len(a.Audit) != len(populatedChanges()) {
		t.Fatalf("version %d with %d audit entries", a.Version, len(a.Audit))
	}
}

// TestApplyErrorDeterministic checks that a change breaking several
// invariants at once fails with the same message every time.
func TestApplyErrorDeterministic(t *testing.T) {
	var steps []Step
	for i := range 20 {
		steps = append(steps, createLogical(KindReplicating, fmt.Sprintf("empty-%02d", 19-i)))
	}
	var first string
	for i := range 50 {
		m := baseMap(t)
		err := m.Apply(change(steps...))
		wantErr(t, err, ErrInvalidChange, `resulting map: replicating shard "empty-00" has no children`)
		if i == 0 {
			first = err.Error()
		} else if err.Error() != first {
			t.Fatalf("error %q, then %q", first, err)
		}
	}
}
