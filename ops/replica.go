package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/spf13/cobra"
)

// wrapperSuffix names the write_only wrapper of a new replica.
const wrapperSuffix = "-wo"

// leavesUnder returns the physical shards under id, in tree order.
func leavesUnder(m *gizzard.Map, id string) []gizzard.Shard {
	var out []gizzard.Shard
	seen := map[string]bool{}
	var walk func(id string)
	walk = func(id string) {
		sh, ok := m.Shards[id]
		if !ok || seen[id] {
			return
		}
		seen[id] = true
		if sh.Kind == gizzard.KindPhysical {
			out = append(out, sh)
			return
		}
		for _, l := range sh.Children {
			walk(l.Child)
		}
	}
	walk(id)
	return out
}

// replicating returns the replicating shard root of m.
func replicating(m *gizzard.Map, root string) (gizzard.Shard, error) {
	sh, ok := m.Shards[root]
	if !ok {
		return sh, fmt.Errorf("shard %q does not exist", root)
	}
	if sh.Kind != gizzard.KindReplicating {
		return sh, fmt.Errorf("shard %q is %s; replicas hang under a replicating shard", root, sh.Kind)
	}
	return sh, nil
}

// replicaAdd describes a new replica.
type replicaAdd struct {
	Root     string `json:"root"`
	Node     string `json:"node"`
	Shard    string `json:"shard"`
	Wrapper  string `json:"wrapper,omitempty"`
	Readable bool   `json:"readable"`
	Weight   int    `json:"weight"`
}

// planReplicaAdd returns the steps that add a physical shard on node under
// the replicating root: wrapped in a write_only shard unless readable. An
// empty id names the shard "<first leaf under root>-<node>".
func planReplicaAdd(m *gizzard.Map, root, node, id string, readable bool, weight int) (replicaAdd, []gizzard.Step, error) {
	r := replicaAdd{Root: root, Node: node, Shard: id, Readable: readable, Weight: max(weight, 1)}
	if _, err := replicating(m, root); err != nil {
		return r, nil, err
	}
	if _, ok := m.Nodes[node]; !ok {
		return r, nil, fmt.Errorf("node %q is not in the map", node)
	}
	leaves := leavesUnder(m, root)
	for _, l := range leaves {
		if l.Node == node {
			return r, nil, fmt.Errorf("node %q already holds %q under %q; a second replica on one node adds no redundancy", node, l.ID, root)
		}
	}
	if r.Shard == "" {
		base := root
		if len(leaves) > 0 {
			base = leaves[0].ID
		}
		r.Shard = base + "-" + node
	}
	names := []string{r.Shard}
	if !readable {
		r.Wrapper = r.Shard + wrapperSuffix
		names = append(names, r.Wrapper)
	}
	for _, name := range names {
		if err := gizzard.ValidName(name); err != nil {
			return r, nil, fmt.Errorf("shard id: %w; choose one with --shard", err)
		}
		if _, ok := m.Shards[name]; ok {
			return r, nil, fmt.Errorf("shard %q already exists; choose another id with --shard", name)
		}
	}
	steps := []gizzard.Step{{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: r.Shard, Kind: gizzard.KindPhysical, Node: node}}}
	child := r.Shard
	if !readable {
		steps = append(steps, gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{
			ID: r.Wrapper, Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: r.Shard, Weight: 1}},
		}})
		child = r.Wrapper
	}
	steps = append(steps, gizzard.Step{Op: gizzard.OpAddLink, Parent: root, Child: child, Weight: r.Weight})
	return r, steps, nil
}

// replicaChild finds the child of root that is shard, or that wraps it:
// the link's child and, when that is a wrapper, the shard it wraps.
func replicaChild(m *gizzard.Map, root, shard string) (child gizzard.Shard, inner string, err error) {
	sh, err := replicating(m, root)
	if err != nil {
		return child, "", err
	}
	for _, l := range sh.Children {
		c := m.Shards[l.Child]
		if l.Child == shard {
			if c.Kind.IsWrapper() && len(c.Children) == 1 {
				return c, c.Children[0].Child, nil
			}
			return c, "", nil
		}
		if c.Kind.IsWrapper() && len(c.Children) == 1 && c.Children[0].Child == shard {
			return c, shard, nil
		}
	}
	if _, ok := m.Shards[shard]; !ok {
		return child, "", fmt.Errorf("shard %q does not exist", shard)
	}
	return child, "", fmt.Errorf("shard %q is not a child of %q, nor wrapped by one", shard, root)
}

// planReplicaPromote returns the steps that make a write-only replica
// readable: the write_only wrapper between root and the replica is
// replaced by the replica itself, and deleted.
func planReplicaPromote(m *gizzard.Map, root, shard string) ([]gizzard.Step, error) {
	w, inner, err := replicaChild(m, root, shard)
	if err != nil {
		return nil, err
	}
	if w.Kind != gizzard.KindWriteOnly {
		if inner == "" {
			return nil, fmt.Errorf("%q is already readable under %q: no write_only wrapper to remove", w.ID, root)
		}
		return nil, fmt.Errorf("%q is wrapped by %s shard %q, not write_only; change it with link and shard commands", inner, w.Kind, w.ID)
	}
	return []gizzard.Step{
		{Op: gizzard.OpRemoveLink, Parent: w.ID, Child: inner},
		{Op: gizzard.OpReplaceChild, Parent: root, Child: w.ID, NewChild: inner},
		{Op: gizzard.OpDeleteShard, ShardID: w.ID},
	}, nil
}

// ErrLastReadable is returned by replica remove for the last readable
// replica of a tree, unless forced.
var ErrLastReadable = errors.New("ops: last readable replica")

// planReplicaRemove returns the steps that unlink root's child shard (or
// the wrapper around it) and delete it and everything below it. It
// refuses, unless force, when the tree has a readable replica now and
// would have none after.
func planReplicaRemove(m *gizzard.Map, root, shard string, force bool) ([]gizzard.Step, error) {
	c, _, err := replicaChild(m, root, shard)
	if err != nil {
		return nil, err
	}
	if len(m.Shards[root].Children) == 1 {
		return nil, fmt.Errorf("%q is the only child of %q, which needs at least one; add another replica first", c.ID, root)
	}
	steps := []gizzard.Step{{Op: gizzard.OpRemoveLink, Parent: root, Child: c.ID}}
	steps = deleteTree(m, c.ID, steps, map[string]bool{})
	after := m.Clone()
	if err := after.Apply(gizzard.Change{Steps: steps, Who: "ops", At: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, errBefore := m.PlanRead(root, 0); errBefore == nil && !force {
		if _, errAfter := after.PlanRead(root, 0); errAfter != nil {
			return nil, fmt.Errorf("%w: %q holds the last readable replica under %q (%v); the others are not readable yet. Promote one first, or use --force",
				ErrLastReadable, shard, root, errAfter)
		}
	}
	return steps, nil
}

// deleteTree appends the steps that delete the tree rooted at id (already
// unlinked from its parent), bottom-up.
func deleteTree(m *gizzard.Map, id string, steps []gizzard.Step, seen map[string]bool) []gizzard.Step {
	if seen[id] {
		return steps
	}
	seen[id] = true
	for _, l := range m.Shards[id].Children {
		steps = append(steps, gizzard.Step{Op: gizzard.OpRemoveLink, Parent: id, Child: l.Child})
		steps = deleteTree(m, l.Child, steps, seen)
	}
	return append(steps, gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: id})
}

func newReplicaCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Add, promote and remove replicas of a shard tree",
		Long: `Manage the replicas under a replicating shard, each operation one atomic
change of the map:

  add      a physical shard on a node, behind a write_only wrapper: it gets
           every new write but serves no reads, since it starts empty
  promote  replace the wrapper by the replica, so that it serves reads
  remove   unlink the replica (and its wrapper) and delete them

Copying existing data into a new replica comes with "ops migrate" (a later
issue); until then, promote a replica only once it holds the tree's data, or
add it --readable to an empty site.`,
		Example: `  ops replica add rep-003 --node node-2
  ops replica promote rep-003 default-003-node-2
  ops replica remove rep-003 default-003-node-2`,
		RunE: groupRunE,
	}
	cmd.AddCommand(newReplicaAddCommand(o), newReplicaPromoteCommand(o), newReplicaRemoveCommand(o))
	return cmd
}

func newReplicaAddCommand(o *options) *cobra.Command {
	var node, id string
	var readable bool
	var weight int
	cmd := &cobra.Command{
		Use:   "add ROOT --node N [--shard ID] [--readable]",
		Short: "Add a replica on a node under a replicating shard",
		Long: `In one change: create a physical shard on node N (by default named after the
first physical shard under ROOT and the node, "default-003-node-2") and link
it under the replicating shard ROOT, wrapped in a write_only shard ("<id>-wo")
unless --readable. The wrapper passes writes through and refuses reads: the
new replica is empty until the tree's data is copied into it.`,
		Example: `  ops replica add rep-003 --node node-2
  ops replica add rep-003 --node node-2 --shard posts-3b --readable   # an empty site`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if weight < 1 {
				return fmt.Errorf("--weight %d: must be at least 1", weight)
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			s.ifVersion = m.Version // planned from this map: apply to it only
			r, steps, err := planReplicaAdd(m, args[0], node, id, readable, weight)
			if err != nil {
				return err
			}
			// A shard deleted from the map keeps its data on its node: a
			// new replica of the same name would start with stale data.
			if have, err := s.listShards(ctx, m.Nodes[node].GRPCAddr); err != nil {
				fmt.Fprintf(s.errOut, "note: cannot check the shards of %s: %v\n", node, err)
			} else if _, ok := have[r.Shard]; ok {
				return fmt.Errorf("%s still holds a physical shard %q (from an earlier replica, with its old data); drop it there first or choose another id with --shard", node, r.Shard)
			}
			note := fmt.Sprintf("replica %s on %s is readable under %s.", r.Shard, r.Node, r.Root)
			if !readable {
				note = fmt.Sprintf(`replica %s on %s is write-only (wrapped in %s): it gets every new write but serves
no reads, because it is empty until the tree's data is copied into it (online copy comes
with "ops migrate"). Once it holds the data: ops replica promote %s %s`, r.Shard, r.Node, r.Wrapper, r.Root, r.Shard)
			}
			return s.propose(ctx, steps, note)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "the node to hold the replica")
	f.StringVar(&id, "shard", "", `id of the new physical shard (default "<first leaf under ROOT>-<node>")`)
	f.BoolVar(&readable, "readable", false, "link the replica without a write_only wrapper: it serves reads at once")
	f.IntVar(&weight, "weight", 1, "read weight of the replica within ROOT")
	_ = cmd.MarkFlagRequired("node")
	return cmd
}

func newReplicaPromoteCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "promote ROOT SHARD",
		Short: "Let a write-only replica serve reads",
		Long: `In one change, replace the write_only wrapper between the replicating shard
ROOT and the replica SHARD by SHARD itself, and delete the wrapper. SHARD may
name the replica or its wrapper. Promote a replica only once it holds the
tree's data: from then on reads may be served from it.`,
		Example: `  ops replica promote rep-003 default-003-node-2`,
		Args:    cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			s.ifVersion = m.Version // planned from this map: apply to it only
			steps, err := planReplicaPromote(m, args[0], args[1])
			if err != nil {
				return err
			}
			return s.propose(ctx, steps)
		}),
	}
}

func newReplicaRemoveCommand(o *options) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "remove ROOT SHARD [--force]",
		Short: "Remove a replica from a replicating shard",
		Long: `In one change, unlink the replica SHARD (or its wrapper) from the replicating
shard ROOT and delete it, with its wrapper if it has one. It refuses to
remove the last readable replica of ROOT (reads would fail) unless --force.
The physical shard's data stays on its node until dropped there.`,
		Example: `  ops replica remove rep-003 default-003-node-2
  ops replica remove rep-003 default-003 --force`,
		Args: cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			s.ifVersion = m.Version // planned from this map: apply to it only
			steps, err := planReplicaRemove(m, args[0], args[1], force)
			if err != nil {
				return err
			}
			var notes []string
			for _, st := range steps {
				if sh := m.Shards[st.ShardID]; st.Op == gizzard.OpDeleteShard && sh.Kind == gizzard.KindPhysical {
					notes = append(notes, fmt.Sprintf("the data of %s stays on %s until dropped there (ShardAdmin.DropShard)", sh.ID, sh.Node))
				}
			}
			return s.propose(ctx, steps, notes...)
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove even the last readable replica")
	return cmd
}
