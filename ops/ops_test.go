package ops

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/spf13/cobra"
)

func TestEveryCommandHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%q: Short, Long and Example must all be set", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			walk(sub)
		}
	}
	walk(NewCommand())
}

func TestUnknownSubcommand(t *testing.T) {
	for _, args := range [][]string{{"tree", "foo"}, {"replica", "grow", "rep-000"}, {"bogus"}} {
		if _, _, err := runOps(t, args...); err == nil || !strings.Contains(err.Error(), "unknown command") {
			t.Errorf("ops %s: %v", strings.Join(args, " "), err)
		}
	}
	if out, _, err := runOps(t, "tree"); err != nil || !strings.Contains(out, "tree show") {
		t.Errorf("ops tree: %v\n%s", err, out)
	}
}

func TestParseBase(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"9223372036854775808", 1 << 63, true},
		{"0x8000000000000000", 1 << 63, true},
		{"0XfFfFfFfFfFfFfFfF", math.MaxUint64, true},
		{"18446744073709551616", 0, false},
		{"0x10000000000000000", 0, false},
		{"0xZZ", 0, false},
		{"-1", 0, false},
		{"", 0, false},
		{"0x", 0, false},
	} {
		got, err := parseBase(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseBase(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestShorten(t *testing.T) {
	long := strings.Repeat("create_shard physical \"x\"; ", 10) + "end"
	for _, tc := range []struct {
		in, want string
	}{
		{"short", "short"},
		{long, strings.Repeat("create_shard physical \"x\"; ", 3) + "... (8 more steps, see --full)"},
		{strings.Repeat("y", 150), strings.Repeat("y", 150)},
	} {
		if got := shorten(tc.in, 100); got != tc.want {
			t.Errorf("shorten(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// replicaMap is a two-node site with one tree: rep-0 over p-0 on n0.
func replicaMap(t *testing.T) *gizzard.Map {
	return testMap(t, []gizzard.Step{
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "n0"}},
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "n1"}},
		{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: "n2"}},
		{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: "t", Kind: gizzard.TableContent}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "p-0", Kind: gizzard.KindPhysical, Node: "n0"}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: "rep-0", Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: "p-0"}}}},
		{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: "t", Root: "rep-0"}},
	})
}

// apply applies steps to m, failing the test on an error.
func apply(t *testing.T, m *gizzard.Map, steps []gizzard.Step) {
	t.Helper()
	if err := m.Apply(gizzard.Change{Steps: steps, Who: "test"}); err != nil {
		t.Fatal(err)
	}
}

func treeString(m *gizzard.Map, root string) string {
	var b strings.Builder
	renderTree(&b, buildTree(m, root, 0, map[string]bool{}))
	return b.String()
}

func TestReplicaLifecycle(t *testing.T) {
	m := replicaMap(t)
	r, steps, err := planReplicaAdd(m, "rep-0", "n1", "", false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Shard != "p-0-n1" || r.Wrapper != "p-0-n1-wo" {
		t.Fatalf("names %+v", r)
	}
	apply(t, m, steps)
	want := `rep-0 (replicating)
├── p-0 (physical on n0)
└── p-0-n1-wo (write_only)
    └── p-0-n1 (physical on n1)
`
	if got := treeString(m, "rep-0"); got != want {
		t.Fatalf("after add:\n%s\nwant:\n%s", got, want)
	}
	// The new replica gets writes but no reads.
	wp, _ := m.PlanWrite("rep-0")
	if len(wp.Targets) != 2 {
		t.Fatalf("write targets %v", wp.Targets)
	}
	if rd, _ := m.PlanRead("rep-0", 7); len(rd) != 1 || rd[0].Shard != "p-0" {
		t.Fatalf("read order %v", rd)
	}
	// The only readable replica cannot go without --force.
	if _, err := planReplicaRemove(m, "rep-0", "p-0", false); !errors.Is(err, ErrLastReadable) {
		t.Fatalf("remove last readable: %v", err)
	}
	if _, err := planReplicaRemove(m, "rep-0", "p-0", true); err != nil {
		t.Fatalf("remove last readable with force: %v", err)
	}
	// Promote by the leaf's id or the wrapper's.
	for _, name := range []string{"p-0-n1", "p-0-n1-wo"} {
		steps, err := planReplicaPromote(m, "rep-0", name)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Check(gizzard.Change{Steps: steps}); err != nil {
			t.Fatalf("promote %s: %v", name, err)
		}
	}
	steps, _ = planReplicaPromote(m, "rep-0", "p-0-n1")
	apply(t, m, steps)
	want = `rep-0 (replicating)
├── p-0 (physical on n0)
└── p-0-n1 (physical on n1)
`
	if got := treeString(m, "rep-0"); got != want {
		t.Fatalf("after promote:\n%s\nwant:\n%s", got, want)
	}
	if _, ok := m.Shards["p-0-n1-wo"]; ok {
		t.Fatal("wrapper not deleted")
	}
	if _, err := planReplicaPromote(m, "rep-0", "p-0-n1"); err == nil || !strings.Contains(err.Error(), "already readable") {
		t.Fatalf("promote twice: %v", err)
	}
	// A readable replica on n2, then remove it again with its wrapper.
	_, steps, err = planReplicaAdd(m, "rep-0", "n2", "mine", false, 3)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, m, steps)
	steps, err = planReplicaRemove(m, "rep-0", "mine", false)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, m, steps)
	for _, id := range []string{"mine", "mine-wo"} {
		if _, ok := m.Shards[id]; ok {
			t.Fatalf("%s not deleted", id)
		}
	}
	steps, err = planReplicaRemove(m, "rep-0", "p-0-n1", false)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, m, steps)
	if got, want := treeString(m, "rep-0"), "rep-0 (replicating)\n└── p-0 (physical on n0)\n"; got != want {
		t.Fatalf("after remove:\n%s\nwant:\n%s", got, want)
	}
	if _, err := planReplicaRemove(m, "rep-0", "p-0", true); err == nil || !strings.Contains(err.Error(), "only child") {
		t.Fatalf("remove only child: %v", err)
	}
}

func TestReplicaErrors(t *testing.T) {
	m := replicaMap(t)
	for _, tc := range []struct {
		name string
		err  func() error
		want string
	}{
		{"add to physical", func() error { _, _, err := planReplicaAdd(m, "p-0", "n1", "", false, 1); return err }, "replicas hang under a replicating shard"},
		{"add unknown root", func() error { _, _, err := planReplicaAdd(m, "nope", "n1", "", false, 1); return err }, `shard "nope" does not exist`},
		{"add unknown node", func() error { _, _, err := planReplicaAdd(m, "rep-0", "n9", "", false, 1); return err }, `node "n9" is not in the map`},
		{"add on holder", func() error { _, _, err := planReplicaAdd(m, "rep-0", "n0", "", false, 1); return err }, `node "n0" already holds "p-0"`},
		{"add existing id", func() error { _, _, err := planReplicaAdd(m, "rep-0", "n1", "rep-0", true, 1); return err }, `shard "rep-0" already exists`},
		{"add bad id", func() error { _, _, err := planReplicaAdd(m, "rep-0", "n1", "a/b", true, 1); return err }, "choose one with --shard"},
		{"promote readable", func() error { _, err := planReplicaPromote(m, "rep-0", "p-0"); return err }, "already readable"},
		{"promote stranger", func() error { _, err := planReplicaPromote(m, "rep-0", "rep-0"); return err }, "is not a child of"},
		{"remove unknown", func() error { _, err := planReplicaRemove(m, "rep-0", "zz", false); return err }, `shard "zz" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDevReplicaSteps(t *testing.T) {
	nodes := []string{"node-0", "node-1", "node-2", "node-3", "node-4"}
	steps := []gizzard.Step{}
	for _, id := range nodes {
		steps = append(steps, gizzard.Step{Op: gizzard.OpAddNode, Node: &gizzard.Node{ID: id}})
	}
	for i := range 5 {
		leaf := fmt.Sprintf("default-%03d", i)
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: leaf, Kind: gizzard.KindPhysical, Node: "node-0"}},
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: fmt.Sprintf("rep-%03d", i), Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: leaf}}}})
	}
	m := testMap(t, steps)
	add, err := devReplicaSteps(m, nodes, 3)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, m, add)
	perNode := map[string]int{}
	for i := range 5 {
		root := fmt.Sprintf("rep-%03d", i)
		leaves, err := m.PlanRead(root, 0)
		if err != nil || len(leaves) != 3 {
			t.Fatalf("%s: %v %v", root, leaves, err)
		}
		for _, l := range leaves {
			perNode[l.Node]++
		}
	}
	// node-0 holds every original; the 10 new replicas spread evenly.
	if want := map[string]int{"node-0": 5, "node-1": 3, "node-2": 3, "node-3": 2, "node-4": 2}; fmt.Sprint(perNode) != fmt.Sprint(want) {
		t.Fatalf("replicas per node %v, want %v", perNode, want)
	}
	// Idempotent: a second run adds nothing.
	if again, err := devReplicaSteps(m, nodes, 3); err != nil || len(again) != 0 {
		t.Fatalf("second run: %v %v", again, err)
	}
}

func TestGoModPath(t *testing.T) {
	if got := goModPath([]byte("// c\nmodule github.com/aviarydb/aviary\n\ngo 1.26\n")); got != modulePath {
		t.Fatalf("got %q", got)
	}
}
