package ops

import (
	"context"
	"fmt"
	pb "github.com/aviarydb/aviary/api/aviarypb"
	"strconv"
	"strings"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/spf13/cobra"
)

// kinds lists the shard kinds, for help and errors.
var kinds = []gizzard.Kind{
	gizzard.KindPhysical, gizzard.KindReplicating, gizzard.KindReadOnly,
	gizzard.KindWriteOnly, gizzard.KindBlocked, gizzard.KindBlackHole,
}

func parseKind(s string) (gizzard.Kind, error) {
	for _, k := range kinds {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return "", fmt.Errorf("--kind %q: want one of %s", s, strings.Join(names, ", "))
}

// parseLink parses CHILD or CHILD:WEIGHT.
func parseLink(s string) (gizzard.Link, error) {
	child, w, ok := strings.Cut(s, ":")
	l := gizzard.Link{Child: child, Weight: 1}
	if ok {
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			return l, fmt.Errorf("--child %q: the weight after ':' must be a whole number of at least 1", s)
		}
		l.Weight = n
	}
	return l, nil
}

func newShardCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shard",
		Short: "Create or delete shards of the map",
		Long: `Create or delete one shard of the map, each as one change. A physical shard
is created on its node when the node applies the map. To build replicas use
the replica commands, which add and link shards in one change.`,
		Example: `  ops shard create posts-7 --kind physical --node node-2
  ops shard delete posts-7`,
		RunE: groupRunE,
	}
	var kind, node string
	var children []string
	create := &cobra.Command{
		Use:   "create ID --kind KIND [--node NODE] [--child CHILD[:WEIGHT]]...",
		Short: "Create a shard",
		Long: `Create a shard. A physical shard needs --node and takes no children. A
logical shard needs its children in the same change: a replicating shard one
or more (each CHILD or CHILD:WEIGHT, weight 1 by default), a wrapper
(read_only, write_only, blocked, black_hole) exactly one. Each child must exist
and have no parent yet.`,
		Example: `  ops shard create posts-7 --kind physical --node node-2
  ops shard create posts-7-ro --kind read_only --child posts-7
  ops shard create rep-posts --kind replicating --child posts-7:2 --child posts-8`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			k, err := parseKind(kind)
			if err != nil {
				return err
			}
			sh := &gizzard.Shard{ID: args[0], Kind: k, Node: node}
			for _, c := range children {
				l, err := parseLink(c)
				if err != nil {
					return err
				}
				sh.Children = append(sh.Children, l)
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpCreateShard, Shard: sh}})
		}),
	}
	create.Flags().StringVar(&kind, "kind", "", "physical, replicating, read_only, write_only, blocked or black_hole")
	create.Flags().StringVar(&node, "node", "", "the node of a physical shard")
	create.Flags().StringArrayVar(&children, "child", nil, "a child of a logical shard, CHILD or CHILD:WEIGHT (repeat for more)")
	_ = create.MarkFlagRequired("kind")

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a shard",
		Long: `Delete a shard of the map. It must have no parent, no children and no
forwarding: delete trees bottom-up, removing links first. A physical shard's
data stays on its node.`,
		Example: `  ops link remove rep-007 posts-7
  ops shard delete posts-7`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpDeleteShard, ShardID: args[0]}})
		}),
	}
	var yes bool
	dropData := &cobra.Command{
		Use:   "drop-data NODE SHARD --yes",
		Short: "Delete a physical shard's data from its node",
		Long: `Delete the physical shard SHARD and all its data from node NODE. The node
refuses while the map still assigns SHARD to it: delete the shard from the
map first (replica remove, or shard delete). Asks for --yes.`,
		Example: `  ops replica remove rep-003 default-003-node-2
  ops shard drop-data node-2 default-003-node-2 --yes`,
		Args: cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if !yes {
				return fmt.Errorf("%w: this deletes every record of %s on %s; run again with --yes", ErrNotConfirmed, args[1], args[0])
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			n, ok := m.Nodes[args[0]]
			if !ok {
				return fmt.Errorf("no node %q in the map", args[0])
			}
			a, err := s.admin(n.GRPCAddr)
			if err != nil {
				return err
			}
			rctx, cancel := s.rpcCtx(ctx)
			defer cancel()
			if _, err := a.DropShard(rctx, &pb.DropShardRequest{Name: args[1]}); err != nil {
				return s.rpcErr("drop shard on", n.GRPCAddr, err)
			}
			fmt.Fprintf(s.out, "dropped %s and its data on %s\n", args[1], args[0])
			return nil
		}),
	}
	dropData.Flags().BoolVar(&yes, "yes", false, "confirm that the shard's data is deleted")
	cmd.AddCommand(create, del, dropData)
	return cmd
}

func newLinkCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "link",
		Short: "Add, remove or reweigh links between shards",
		Long: `Add, remove or reweigh one parent-to-child link of the map, each as one
change. A shard has at most one parent, links never form a cycle, and a
wrapper takes exactly one child.`,
		Example: `  ops link add rep-007 posts-7 --weight 2
  ops link remove rep-007 posts-7`,
		RunE: groupRunE,
	}
	var weight int
	add := &cobra.Command{
		Use:   "add PARENT CHILD [--weight W]",
		Short: "Link a child under a parent",
		Long: `Link CHILD under PARENT with a weight (default 1): a replicating parent's
children are read in proportion to their weights. CHILD must have no parent
and must not be the root of a forwarding.`,
		Example: `  ops link add rep-007 posts-7
  ops link add rep-007 posts-8 --weight 3`,
		Args: cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if weight < 1 {
				return fmt.Errorf("--weight %d: must be at least 1", weight)
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpAddLink, Parent: args[0], Child: args[1], Weight: weight}})
		}),
	}
	add.Flags().IntVar(&weight, "weight", 1, "read weight of the child within a replicating parent")
	remove := &cobra.Command{
		Use:   "remove PARENT CHILD",
		Short: "Remove the link from a parent to a child",
		Long: `Remove the link from PARENT to CHILD. The change is refused if it leaves the
map invalid, for example a wrapper or a replicating shard without children.`,
		Example: `  ops link remove rep-007 posts-7`,
		Args:    cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpRemoveLink, Parent: args[0], Child: args[1]}})
		}),
	}
	setWeight := &cobra.Command{
		Use:     "weight PARENT CHILD W",
		Short:   "Set the read weight of a link",
		Long:    `Set the weight (at least 1) of the link from PARENT to CHILD.`,
		Example: `  ops link weight rep-007 posts-8 1`,
		Args:    cobra.ExactArgs(3),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			w, err := strconv.Atoi(args[2])
			if err != nil || w < 1 {
				return fmt.Errorf("weight %q: must be a whole number of at least 1", args[2])
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpSetWeight, Parent: args[0], Child: args[1], Weight: w}})
		}),
	}
	cmd.AddCommand(add, remove, setWeight)
	return cmd
}

func newForwardingCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "forwarding",
		Short: "Set or remove forwardings of tables",
		Long: `Set or remove one forwarding of a table, each as one change. Keys of the
table whose hash is at least BASE, up to the next base, go to the tree rooted
at ROOT. BASE is decimal or 0x and hex.`,
		Example: `  ops forwarding set statuses 0x8000000000000000 rep-004
  ops forwarding remove statuses 0x8000000000000000`,
		RunE: groupRunE,
	}
	set := &cobra.Command{
		Use:   "set TABLE BASE ROOT",
		Short: "Forward a table's hashes from BASE to the tree ROOT",
		Long: `Create the forwarding of TABLE at BASE to ROOT, a shard without a parent.
The base must be free: to re-point a forwarding, remove it first (or use a
tool that does both in one change).`,
		Example: `  ops forwarding set statuses 0x8000000000000000 rep-004
  ops forwarding set users 0 rep-000`,
		Args: cobra.ExactArgs(3),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			base, err := parseBase(args[1])
			if err != nil {
				return err
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: args[0], Base: base, Root: args[2]}}})
		}),
	}
	var root string
	remove := &cobra.Command{
		Use:   "remove TABLE BASE [--root ROOT]",
		Short: "Remove a table's forwarding at BASE",
		Long: `Remove the forwarding of TABLE at BASE. With --root, the change is refused
unless the forwarding still points to ROOT (a guard against removing a
forwarding someone else moved).`,
		Example: `  ops forwarding remove statuses 0x8000000000000000
  ops forwarding remove statuses 9223372036854775808 --root rep-004`,
		Args: cobra.ExactArgs(2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			base, err := parseBase(args[1])
			if err != nil {
				return err
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpRemoveForwarding, Forwarding: &gizzard.Forwarding{Table: args[0], Base: base, Root: root}}})
		}),
	}
	remove.Flags().StringVar(&root, "root", "", "refuse unless the forwarding points to this root")
	cmd.AddCommand(set, remove)
	return cmd
}

func newTableCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "table",
		Short: "Create tables",
		Long: `Create a table of the site. Every node creates it in its physical shards
when it applies the map; add forwardings so that its keys route somewhere.`,
		Example: `  ops table create likes --kind index
  ops forwarding set likes 0 rep-000`,
		RunE: groupRunE,
	}
	var kind string
	create := &cobra.Command{
		Use:   "create NAME --kind content|index",
		Short: "Create a table",
		Long: `Create a table: content (key -> value) or index (per-owner, newest-first
entries). Creating an existing table of the same kind changes nothing; of the
other kind it is an error.`,
		Example: `  ops table create likes --kind index
  ops table create drafts --kind content`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			k := gizzard.TableKind(kind)
			if k != gizzard.TableContent && k != gizzard.TableIndex {
				return fmt.Errorf("--kind %q: want content or index", kind)
			}
			return s.propose(ctx, []gizzard.Step{{Op: gizzard.OpCreateTable, Table: &gizzard.Table{Name: args[0], Kind: k}}})
		}),
	}
	create.Flags().StringVar(&kind, "kind", "", "content or index")
	_ = create.MarkFlagRequired("kind")
	cmd.AddCommand(create)
	return cmd
}
