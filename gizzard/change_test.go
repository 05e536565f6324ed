package gizzard

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestApplyOps(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []Step
		check func(t *testing.T, m *Map)
	}{
		{
			name:  "add_node",
			steps: []Step{addNode("n4")},
			check: func(t *testing.T, m *Map) {
				if got, want := m.Nodes["n4"], (Node{ID: "n4", GRPCAddr: "127.0.0.1:7n4", RaftAddr: "127.0.0.1:8n4"}); got != want {
					t.Fatalf("node n4 = %+v, want %+v", got, want)
				}
			},
		},
		{
			name:  "remove_node",
			steps: []Step{removeNode("n3")},
			check: func(t *testing.T, m *Map) {
				if _, ok := m.Nodes["n3"]; ok {
					t.Fatal("n3 still there")
				}
			},
		},
		{
			name:  "create_table",
			steps: []Step{createTable("likes", TableIndex)},
			check: func(t *testing.T, m *Map) {
				if got := m.Tables["likes"]; got != (Table{Name: "likes", Kind: TableIndex}) {
					t.Fatalf("table likes = %+v", got)
				}
			},
		},
		{
			name:  "create_table of an existing table with the same kind does nothing",
			steps: []Step{createTable("posts", TableContent)},
			check: func(t *testing.T, m *Map) {
				if len(m.Tables) != 2 || m.Tables["posts"].Kind != TableContent {
					t.Fatalf("tables = %+v", m.Tables)
				}
			},
		},
		{
			name:  "create_shard physical",
			steps: []Step{createPhysical("p3", "n3")},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["p3"]; !reflect.DeepEqual(got, phys("p3", "n3")) {
					t.Fatalf("p3 = %+v", got)
				}
			},
		},
		{
			name: "create_shard logical with children, weight 0 meaning 1",
			steps: []Step{
				createPhysical("p3", "n3"), createPhysical("p4", "n1"),
				createLogical(KindReplicating, "r2", link("p3", 0), link("p4", 5)),
			},
			check: func(t *testing.T, m *Map) {
				if got, want := m.Shards["r2"].Children, []Link{link("p3", 1), link("p4", 5)}; !slices.Equal(got, want) {
					t.Fatalf("children of r2 = %v, want %v", got, want)
				}
			},
		},
		{
			name:  "delete_shard bottom-up",
			steps: []Step{removeLink("r", "p2"), deleteShard("p2")},
			check: func(t *testing.T, m *Map) {
				if _, ok := m.Shards["p2"]; ok {
					t.Fatal("p2 still there")
				}
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p1", 1)}) {
					t.Fatalf("children of r = %v", got)
				}
			},
		},
		{
			name: "delete a whole tree",
			steps: []Step{
				removeFwd("posts", 0, "r"), removeLink("r", "p1"), removeLink("r", "p2"),
				deleteShard("r"), deleteShard("p1"), deleteShard("p2"),
			},
			check: func(t *testing.T, m *Map) {
				if len(m.Shards) != 0 || len(m.Forwardings) != 0 {
					t.Fatalf("shards %v, forwardings %v", m.Shards, m.Forwardings)
				}
			},
		},
		{
			name:  "add_link",
			steps: []Step{createPhysical("p3", "n3"), addLink("r", "p3", 2)},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p1", 1), link("p2", 1), link("p3", 2)}) {
					t.Fatalf("children of r = %v", got)
				}
			},
		},
		{
			name:  "remove_link",
			steps: []Step{removeLink("r", "p1")},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p2", 1)}) {
					t.Fatalf("children of r = %v", got)
				}
				if got := m.Roots(); !slices.Equal(got, []string{"p1", "r"}) {
					t.Fatalf("roots = %v", got)
				}
			},
		},
		{
			name:  "set_weight",
			steps: []Step{setWeight("r", "p2", 3)},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p1", 1), link("p2", 3)}) {
					t.Fatalf("children of r = %v", got)
				}
			},
		},
		{
			name:  "replace_child inserts a wrapper",
			steps: []Step{setWeight("r", "p2", 4), createLogical(KindWriteOnly, "w"), replaceChild("r", "p2", "w"), addLink("w", "p2", 0)},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p1", 1), link("w", 4)}) {
					t.Fatalf("children of r = %v", got)
				}
				if got := m.Parent("p2"); got != "w" {
					t.Fatalf("parent of p2 = %q", got)
				}
			},
		},
		{
			name: "replace_child removes a wrapper",
			steps: []Step{
				createLogical(KindWriteOnly, "w"), replaceChild("r", "p2", "w"), addLink("w", "p2", 0),
				removeLink("w", "p2"), replaceChild("r", "w", "p2"), deleteShard("w"),
			},
			check: func(t *testing.T, m *Map) {
				if got := m.Shards["r"].Children; !slices.Equal(got, []Link{link("p1", 1), link("p2", 1)}) {
					t.Fatalf("children of r = %v", got)
				}
			},
		},
		{
			name:  "set_forwarding",
			steps: []Step{createPhysical("p3", "n3"), setFwd("posts", 1<<63, "p3"), setFwd("timeline", 0, "p3")},
			check: func(t *testing.T, m *Map) {
				want := []Forwarding{{"posts", 0, "r"}, {"posts", 1 << 63, "p3"}}
				if got := m.Forwardings["posts"]; !slices.Equal(got, want) {
					t.Fatalf("forwardings of posts = %v, want %v", got, want)
				}
			},
		},
		{
			name:  "remove_forwarding then set_forwarding re-points",
			steps: []Step{createPhysical("p3", "n3"), removeFwd("posts", 0, "r"), setFwd("posts", 0, "p3")},
			check: func(t *testing.T, m *Map) {
				if got := m.Forwardings["posts"]; !slices.Equal(got, []Forwarding{{"posts", 0, "p3"}}) {
					t.Fatalf("forwardings of posts = %v", got)
				}
			},
		},
		{
			name:  "remove_forwarding without a root guard",
			steps: []Step{removeFwd("posts", 0, "")},
			check: func(t *testing.T, m *Map) {
				if _, ok := m.Forwardings["posts"]; ok {
					t.Fatalf("forwardings = %v", m.Forwardings)
				}
			},
		},
		{
			name: "wrap a forwarding root",
			steps: []Step{
				createLogical(KindBlocked, "w"), removeFwd("posts", 0, "r"),
				addLink("w", "r", 0), setFwd("posts", 0, "w"),
			},
			check: func(t *testing.T, m *Map) {
				if f, _ := m.Lookup("posts", 12345); f.Root != "w" {
					t.Fatalf("posts routes to %q", f.Root)
				}
				if _, err := m.PlanRead("w", 0); !strings.Contains(err.Error(), "blocked") {
					t.Fatalf("read of w: %v", err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMap(t)
			v, n := m.Version, len(m.Audit)
			mustApply(t, m, tc.steps...)
			if m.Version != v+1 || len(m.Audit) != n+1 {
				t.Fatalf("version %d, %d audit entries; want %d, %d", m.Version, len(m.Audit), v+1, n+1)
			}
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			tc.check(t, m)
		})
	}
}

func TestApplyErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []Step
		want  string // a substring of the error
	}{
		// Cycles.
		{"cycle", []Step{createLogical(KindReplicating, "a"), addLink("r", "a", 1), addLink("a", "r", 1)},
			`step 3 (add_link "a" -> "r" (weight 1)): would create a cycle a -> r -> a`},
		{"longer cycle", []Step{
			createLogical(KindReplicating, "a"), createLogical(KindWriteOnly, "b"),
			addLink("r", "a", 1), addLink("a", "b", 1), addLink("b", "r", 1),
		}, `step 5 (add_link "b" -> "r" (weight 1)): would create a cycle b -> r -> a -> b`},
		{"self link", []Step{addLink("r", "r", 1)}, "would create a cycle r -> r"},
		{"self child at create", []Step{createLogical(KindReplicating, "x", link("x", 1))}, "would create a cycle x -> x"},
		{"cycle by replace_child", []Step{createPhysical("p3", "n3"), createLogical(KindReplicating, "a", link("p3", 1)), addLink("r", "a", 1), replaceChild("a", "p3", "r")},
			`step 4 (replace_child "a" -> "p3" with "a" -> "r"): would create a cycle a -> r -> a`},

		// Dangling references.
		{"dangling child", []Step{addLink("r", "nope", 1)}, `shard "nope" does not exist`},
		{"dangling parent", []Step{addLink("nope", "p1", 1)}, `shard "nope" does not exist`},
		{"dangling child at create", []Step{createLogical(KindReplicating, "x", link("nope", 1))}, `shard "nope" does not exist`},
		{"physical on a missing node", []Step{createPhysical("p3", "n9")}, `node "n9" does not exist`},
		{"forwarding to a missing root", []Step{setFwd("timeline", 0, "nope")}, `shard "nope" does not exist`},
		{"forwarding of a missing table", []Step{setFwd("nope", 0, "p1")}, `table "nope" does not exist`},
		{"replace with a missing shard", []Step{replaceChild("r", "p1", "nope")}, `shard "nope" does not exist`},
		{"remove a missing node", []Step{removeNode("n9")}, `node "n9" does not exist`},
		{"delete a missing shard", []Step{deleteShard("nope")}, `shard "nope" does not exist`},

		// Duplicates.
		{"duplicate node", []Step{addNode("n1")}, `node "n1" already exists`},
		{"duplicate shard", []Step{createPhysical("p1", "n2")}, `shard "p1" already exists`},
		{"duplicate table with another kind", []Step{createTable("posts", TableIndex)}, `table "posts" already exists as a content table`},
		{"duplicate link", []Step{addLink("r", "p1", 1)}, `link "r" -> "p1" already exists`},
		{"duplicate child at create", []Step{createPhysical("p3", "n1"), createLogical(KindReplicating, "x", link("p3", 1), link("p3", 1))}, `lists child "p3" twice`},
		{"overlapping forwarding base", []Step{createPhysical("p3", "n3"), setFwd("posts", 0, "p3")},
			`step 2 (set_forwarding "posts" 0x0000000000000000 -> "p3"): table "posts" already has a forwarding at 0x0000000000000000, to "r"`},

		// Still referenced.
		{"delete a shard with a parent", []Step{deleteShard("p1")}, `shard "p1" is a child of "r"`},
		{"delete a shard with children", []Step{removeFwd("posts", 0, "r"), deleteShard("r")}, `shard "r" still has 2 child(ren)`},
		{"delete a forwarding root", []Step{createPhysical("p3", "n3"), setFwd("timeline", 5, "p3"), deleteShard("p3")},
			`shard "p3" is the root of forwarding "timeline" 0x0000000000000005`},
		{"remove a node in use", []Step{removeNode("n1")}, `node "n1" still holds 1 shard(s), first "p1"`},

		// Shapes.
		{"wrapper with 2 children at create", []Step{createPhysical("p3", "n3"), createPhysical("p4", "n3"), createLogical(KindReadOnly, "w", link("p3", 1), link("p4", 1))},
			`read_only shard "w" has 2 children; it takes exactly 1`},
		{"wrapper with 2 children by add_link", []Step{createPhysical("p3", "n3"), createPhysical("p4", "n3"), createLogical(KindBlackHole, "w", link("p3", 1)), addLink("w", "p4", 1)},
			`step 4 (add_link "w" -> "p4" (weight 1)): black_hole shard "w" already has child "p3"; it takes exactly 1`},
		{"wrapper without a child", []Step{createLogical(KindWriteOnly, "w")}, `resulting map: write_only shard "w" has 0 children; it takes exactly 1`},
		{"replicating without children", []Step{removeLink("r", "p1"), removeLink("r", "p2")}, `resulting map: replicating shard "r" has no children`},
		{"physical with children", []Step{{Op: OpCreateShard, Shard: &Shard{ID: "p3", Kind: KindPhysical, Node: "n1", Children: []Link{link("p1", 1)}}}}, `physical shard "p3" cannot have children`},
		{"link under a physical shard", []Step{createPhysical("p3", "n3"), addLink("p1", "p3", 1)}, `physical shard "p1" cannot have children`},
		{"logical on a node", []Step{{Op: OpCreateShard, Shard: &Shard{ID: "x", Kind: KindReplicating, Node: "n1"}}}, `replicating shard "x" cannot be on a node`},
		{"physical without a node", []Step{{Op: OpCreateShard, Shard: &Shard{ID: "x", Kind: KindPhysical}}}, `physical shard "x" names no node`},
		{"unknown kind", []Step{{Op: OpCreateShard, Shard: &Shard{ID: "x", Kind: "mirror"}}}, `unknown kind "mirror"`},
		{"unknown table kind", []Step{createTable("x", "blob")}, `kind "blob" is neither`},

		// Parents.
		{"second parent by add_link", []Step{createLogical(KindReplicating, "r2"), addLink("r2", "p1", 1)},
			`step 2 (add_link "r2" -> "p1" (weight 1)): shard "p1" already has parent "r"; a shard has at most one`},
		{"second parent at create", []Step{createLogical(KindReplicating, "r2", link("p1", 1))}, `shard "p1" already has parent "r"`},
		{"second parent by replace_child", []Step{createPhysical("p3", "n3"), createLogical(KindReplicating, "r2", link("p3", 1)), replaceChild("r", "p1", "p3")},
			`step 3 (replace_child "r" -> "p1" with "r" -> "p3"): shard "p3" already has parent "r2"`},
		{"replace_child to a sibling", []Step{replaceChild("r", "p1", "p2")}, `link "r" -> "p2" already exists`},
		{"replace_child with itself", []Step{replaceChild("r", "p1", "p1")}, `new_child is the child itself`},
		{"forwarding to a shard with a parent", []Step{setFwd("timeline", 0, "p1")}, `shard "p1" has parent "r"; a forwarding must point to a root`},
		{"forwarding root gains a parent", []Step{createLogical(KindReadOnly, "w"), addLink("w", "r", 1)},
			`resulting map: forwarding "posts" 0x0000000000000000: root shard "r" has parent "w"`},

		// Links and weights.
		{"remove a missing link", []Step{removeLink("r", "p3")}, `no link "r" -> "p3"`},
		{"set_weight 0", []Step{setWeight("r", "p1", 0)}, `weight 0; weights are at least 1`},
		{"set_weight negative", []Step{setWeight("r", "p1", -2)}, `weight -2`},
		{"add_link negative weight", []Step{createPhysical("p3", "n3"), addLink("r", "p3", -1)}, `weight -1`},
		{"set_weight of a missing link", []Step{setWeight("r", "p9", 2)}, `no link "r" -> "p9"`},

		// Forwardings.
		{"remove a missing forwarding", []Step{removeFwd("posts", 7, "")}, `no forwarding "posts" 0x0000000000000007`},
		{"remove a forwarding that moved", []Step{removeFwd("posts", 0, "p1")}, `forwarding "posts" 0x0000000000000000 points to "r", not "p1"`},

		// Malformed steps.
		{"bad node id", []Step{addNode("bad id")}, `byte 3 is not one of [A-Za-z0-9_.-]`},
		{"empty shard id", []Step{createPhysical("", "n1")}, `shard id: name is empty`},
		{"long table name", []Step{createTable(strings.Repeat("t", 65), TableContent)}, `is 65 bytes, limit is 64`},
		{"bad address", []Step{{Op: OpAddNode, Node: &Node{ID: "n9", GRPCAddr: "host 1"}}}, `grpc address "host 1": byte 4 is not printable ASCII`},
		{"missing node", []Step{{Op: OpAddNode}}, `add_node (no node)): node is missing`},
		{"missing parent", []Step{{Op: OpRemoveLink, Child: "p1"}}, `parent is missing`},
		{"unexpected fields", []Step{{Op: OpAddNode, Node: &Node{ID: "n9"}, ShardID: "x", Weight: 2}}, `add_node does not take shard_id, weight`},
		{"unknown op", []Step{{Op: "split_shard"}}, `step 1 (op "split_shard"): unknown op "split_shard"`},
		{"missing op", []Step{{}}, `op is missing`},
		{"no steps", nil, `a change needs at least one step`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMap(t)
			before := mustJSON(t, m)
			err := m.Apply(change(tc.steps...))
			wantErr(t, err, ErrInvalidChange, tc.want)
			if after := mustJSON(t, m); after != before {
				t.Fatalf("failed change altered the map:\n%s\n%s", before, after)
			}
		})
	}
}

func TestApplyChangeErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Change
		want string
	}{
		{"year beyond 9999", Change{Steps: []Step{addNode("n9")}, At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, "year 10000 is outside [0, 9999]"},
		{"who not UTF-8", Change{Steps: []Step{addNode("n9")}, Who: "\xff", At: t0}, "who"},
		{"from not UTF-8", Change{Steps: []Step{addNode("n9")}, From: "a\xc3", At: t0}, "from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMap(t)
			before := mustJSON(t, m)
			wantErr(t, m.Apply(tc.c), ErrInvalidChange, tc.want)
			if mustJSON(t, m) != before {
				t.Fatal("failed change altered the map")
			}
		})
	}
}

func TestApplyAtomic(t *testing.T) {
	m := baseMap(t)
	before := mustJSON(t, m)
	v, n := m.Version, len(m.Audit)
	err := m.Apply(change(
		createPhysical("p3", "n3"),
		addLink("r", "p3", 2),
		addLink("r", "missing", 1),
	))
	wantErr(t, err, ErrInvalidChange, `step 3 (add_link "r" -> "missing" (weight 1)): shard "missing" does not exist`)
	if after := mustJSON(t, m); after != before {
		t.Fatalf("map changed:\n%s\n%s", before, after)
	}
	if m.Version != v || len(m.Audit) != n {
		t.Fatalf("version %d, %d audit entries; want %d, %d", m.Version, len(m.Audit), v, n)
	}
	if _, ok := m.Shards["p3"]; ok {
		t.Fatal("p3 was created")
	}
}

func TestApplyAudit(t *testing.T) {
	m := NewMap()
	at := time.Date(2026, 1, 2, 4, 5, 6, 7, time.FixedZone("CET", 3600))
	c := Change{
		Steps: []Step{
			addNode("n1"), createPhysical("t-0-a", "n1"), createPhysical("t-0-b", "n1"),
			createLogical(KindReplicating, "t-0", link("t-0-a", 1)), addLink("t-0", "t-0-b", 0),
			createTable("posts", TableContent), setFwd("posts", 0, "t-0"),
		},
		Who:  "alice",
		From: "ops-1.example:5000",
		At:   at,
	}
	if err := m.Apply(c); err != nil {
		t.Fatal(err)
	}
	c2 := change(setWeight("t-0", "t-0-b", 3), createLogical(KindWriteOnly, "w"), replaceChild("t-0", "t-0-a", "w"), addLink("w", "t-0-a", 0))
	if err := m.Apply(c2); err != nil {
		t.Fatal(err)
	}
	want := []AuditEntry{
		{
			Version: 1,
			At:      time.Date(2026, 1, 2, 3, 5, 6, 7, time.UTC),
			Who:     "alice",
			From:    "ops-1.example:5000",
			What: `add_node "n1" (grpc "127.0.0.1:7n1", raft "127.0.0.1:8n1"); create_shard physical "t-0-a" on node "n1"; ` +
				`create_shard physical "t-0-b" on node "n1"; create_shard replicating "t-0" over "t-0-a" (weight 1); ` +
				`add_link "t-0" -> "t-0-b" (weight 1); create_table content "posts"; set_forwarding "posts" 0x0000000000000000 -> "t-0"`,
		},
		{
			Version: 2,
			At:      t0,
			Who:     "tester",
			From:    "10.0.0.1",
			What:    `set_weight "t-0" -> "t-0-b" to 3; create_shard write_only "w"; replace_child "t-0" -> "t-0-a" with "t-0" -> "w"; add_link "w" -> "t-0-a" (weight 1)`,
		},
	}
	if m.Version != 2 {
		t.Fatalf("version %d, want 2", m.Version)
	}
	if !reflect.DeepEqual(m.Audit, want) {
		t.Fatalf("audit:\n%+v\nwant\n%+v", m.Audit, want)
	}
}

func TestStepString(t *testing.T) {
	for _, tc := range []struct {
		s    Step
		want string
	}{
		{removeNode("n1"), `remove_node "n1"`},
		{createLogical(KindReplicating, "r", link("a", 2), link("b", 0)), `create_shard replicating "r" over "a" (weight 2), "b" (weight 1)`},
		{deleteShard("p"), `delete_shard "p"`},
		{addLink("t-0", "t-0-b", 1), `add_link "t-0" -> "t-0-b" (weight 1)`},
		{removeLink("a", "b"), `remove_link "a" -> "b"`},
		{removeFwd("posts", 1<<63, ""), `remove_forwarding "posts" 0x8000000000000000`},
		{removeFwd("posts", 1<<63, "old"), `remove_forwarding "posts" 0x8000000000000000 -> "old"`},
		{Step{Op: OpCreateShard}, `create_shard (no shard)`},
		{Step{Op: OpCreateTable}, `create_table (no table)`},
		{Step{Op: OpSetForwarding}, `set_forwarding (no forwarding)`},
		{Step{Op: OpRemoveForwarding}, `remove_forwarding (no forwarding)`},
		{Step{Op: "x\n"}, `op "x\n"`},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("String() = %s, want %s", got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	m := baseMap(t)
	before := mustJSON(t, m)
	if err := m.Check(change(createPhysical("p3", "n3"), addLink("r", "p3", 1))); err != nil {
		t.Fatalf("Check of a valid change: %v", err)
	}
	wantErr(t, m.Check(change(addLink("r", "p1", 1))), ErrInvalidChange, "already exists")
	if after := mustJSON(t, m); after != before {
		t.Fatalf("Check changed the map:\n%s\n%s", before, after)
	}
}

// TestApplyNilMaps checks that Apply works on a map decoded from JSON that
// lacks some fields, and leaves it alone on failure.
func TestApplyNilMaps(t *testing.T) {
	var m Map
	if err := json.Unmarshal([]byte(`{"version":3}`), &m); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.Apply(change(removeNode("n1"))), ErrInvalidChange, "does not exist")
	if m.Nodes != nil || m.Version != 3 {
		t.Fatalf("failed change altered the map: %+v", m)
	}
	if err := m.Apply(change(addNode("n1"))); err != nil {
		t.Fatal(err)
	}
	if m.Version != 4 || len(m.Nodes) != 1 || m.Audit[0].Version != 4 {
		t.Fatalf("map %+v", m)
	}
}

func TestChangeIfVersion(t *testing.T) {
	m := NewMap()
	mustApply(t, m, addNode("n1"))
	c := Change{Who: "t", IfVersion: 1, Steps: []Step{{Op: OpAddNode, Node: &Node{ID: "n2"}}}}
	if err := m.Apply(c); err != nil {
		t.Fatalf("change at the expected version: %v", err)
	}
	c.Steps[0].Node = &Node{ID: "n3"}
	err := m.Apply(c)
	if !errors.Is(err, ErrVersionMoved) || !errors.Is(err, ErrInvalidChange) || m.Version != 2 {
		t.Fatalf("change at a stale version: %v (version %d)", err, m.Version)
	}
}
