package gizzard

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// t0 is the time test changes are stamped with.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)

// Step constructors, to keep test tables short.

func addNode(id string) Step {
	return Step{Op: OpAddNode, Node: &Node{ID: id, GRPCAddr: "127.0.0.1:7" + id, RaftAddr: "127.0.0.1:8" + id}}
}
func removeNode(id string) Step { return Step{Op: OpRemoveNode, NodeID: id} }
func createTable(name string, kind TableKind) Step {
	return Step{Op: OpCreateTable, Table: &Table{Name: name, Kind: kind}}
}
func createPhysical(id, node string) Step {
	return Step{Op: OpCreateShard, Shard: &Shard{ID: id, Kind: KindPhysical, Node: node}}
}
func createLogical(kind Kind, id string, children ...Link) Step {
	return Step{Op: OpCreateShard, Shard: &Shard{ID: id, Kind: kind, Children: children}}
}
func deleteShard(id string) Step { return Step{Op: OpDeleteShard, ShardID: id} }
func addLink(parent, child string, weight int) Step {
	return Step{Op: OpAddLink, Parent: parent, Child: child, Weight: weight}
}
func removeLink(parent, child string) Step {
	return Step{Op: OpRemoveLink, Parent: parent, Child: child}
}
func setWeight(parent, child string, weight int) Step {
	return Step{Op: OpSetWeight, Parent: parent, Child: child, Weight: weight}
}
func replaceChild(parent, child, newChild string) Step {
	return Step{Op: OpReplaceChild, Parent: parent, Child: child, NewChild: newChild}
}
func setFwd(table string, base uint64, root string) Step {
	return Step{Op: OpSetForwarding, Forwarding: &Forwarding{Table: table, Base: base, Root: root}}
}
func removeFwd(table string, base uint64, root string) Step {
	return Step{Op: OpRemoveForwarding, Forwarding: &Forwarding{Table: table, Base: base, Root: root}}
}

// change wraps steps in a change by the test operator.
func change(steps ...Step) Change {
	return Change{Steps: steps, Who: "tester", From: "10.0.0.1", At: t0}
}

// link is a Link literal.
func link(child string, weight int) Link { return Link{Child: child, Weight: weight} }

// baseSteps build the base map of the Apply tests:
//
//	nodes n1 n2 n3; tables posts (content) and timeline (index)
//	r (replicating) -> p1 (n1, weight 1), p2 (n2, weight 1)
//	forwarding posts 0 -> r
var baseSteps = []Step{
	addNode("n1"), addNode("n2"), addNode("n3"),
	createTable("posts", TableContent), createTable("timeline", TableIndex),
	createPhysical("p1", "n1"), createPhysical("p2", "n2"),
	createLogical(KindReplicating, "r", link("p1", 1), link("p2", 1)),
	setFwd("posts", 0, "r"),
}

// baseMap returns the base map of the Apply tests, at version 1.
func baseMap(t testing.TB) *Map {
	t.Helper()
	m := NewMap()
	mustApply(t, m, baseSteps...)
	return m
}

// mustApply applies steps as one change and fails the test on error.
func mustApply(t testing.TB, m *Map, steps ...Step) {
	t.Helper()
	if err := m.Apply(change(steps...)); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// mustJSON marshals v.
func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return string(b)
}

// wantErr checks err against a sentinel and a substring of its message; a
// nil sentinel wants no error.
func wantErr(t testing.TB, err, sentinel error, substr string) {
	t.Helper()
	if sentinel == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want errors.Is %v", err, sentinel)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not contain %q", err, substr)
	}
}

// treeMap builds a map directly from shards on nodes n1..n3 and checks it
// is valid; routing tests use it to lay out trees compactly.
func treeMap(t testing.TB, shards ...Shard) *Map {
	t.Helper()
	m := NewMap()
	for _, n := range []string{"n1", "n2", "n3"} {
		m.Nodes[n] = Node{ID: n}
	}
	for _, s := range shards {
		m.Shards[s.ID] = s
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("tree map: %v", err)
	}
	return m
}

func phys(id, node string) Shard { return Shard{ID: id, Kind: KindPhysical, Node: node} }
func repl(id string, children ...Link) Shard {
	return Shard{ID: id, Kind: KindReplicating, Children: children}
}
func wrap(kind Kind, id, child string) Shard {
	return Shard{ID: id, Kind: kind, Children: []Link{{Child: child, Weight: 1}}}
}
