package ops

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/spf13/cobra"
)

// ErrNotAgreed is returned by ping when a node is unreachable, not ready
// or behind the site's map version.
var ErrNotAgreed = errors.New("ops: nodes do not agree")

func newNodesCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List the site's nodes and what each says about itself",
		Long: `List the nodes of the shard map: id, gRPC and raft addresses, and how many
physical shards each holds; then, from each node's Status and health, its raft
state, the map version its router routes with, and whether it is ready, or
why it cannot be reached.`,
		Example: `  ops nodes
  ops --addr 127.0.0.1:7410 nodes --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			type nodeRow struct {
				ID       string `json:"id"`
				GRPCAddr string `json:"grpc_addr"`
				RaftAddr string `json:"raft_addr"`
				Leaves   int    `json:"leaves"`
				Status   probe  `json:"status"`
			}
			rows := []nodeRow{}
			t := newTable("NODE", "GRPC", "RAFT", "LEAVES", "RAFT STATE", "VERSION", "STATUS")
			ids := sortedNodeIDs(m) // probeAll's order
			for i, p := range s.probeAll(ctx, m) {
				n := m.Nodes[ids[i]]
				r := nodeRow{ID: n.ID, GRPCAddr: n.GRPCAddr, RaftAddr: n.RaftAddr, Leaves: len(m.LeavesOnNode(n.ID)), Status: p}
				rows = append(rows, r)
				t.add(r.ID, r.GRPCAddr, r.RaftAddr, strconv.Itoa(r.Leaves), dash(p.RaftState), versionCell(p), statusCell(p))
			}
			return s.emit(rows, t)
		}),
	}
}

func versionCell(p probe) string {
	if !p.Reachable {
		return "-"
	}
	return strconv.FormatUint(p.MapVersion, 10)
}

func statusCell(p probe) string {
	switch {
	case p.Ready:
		return "ready"
	case p.Error != "":
		return p.Error
	}
	return "not ready"
}

// pingReport is the outcome of one round of ping.
type pingReport struct {
	// Version is the newest map version any node has.
	Version     uint64   `json:"version"`
	Agree       bool     `json:"agree"`
	Nodes       []probe  `json:"nodes"`
	Behind      []string `json:"behind"`
	NotReady    []string `json:"not_ready"`
	Unreachable []string `json:"unreachable"`
}

// assess compares what the nodes say against the map version of the
// node asked for the map.
func assess(mapVersion uint64, probes []probe) pingReport {
	r := pingReport{Version: mapVersion, Nodes: probes, Behind: []string{}, NotReady: []string{}, Unreachable: []string{}}
	for _, p := range probes {
		if p.Reachable {
			r.Version = max(r.Version, p.MapVersion)
		}
	}
	for _, p := range probes {
		switch {
		case !p.Reachable:
			r.Unreachable = append(r.Unreachable, p.Node)
		case !p.Ready:
			r.NotReady = append(r.NotReady, p.Node)
		case p.MapVersion < r.Version:
			r.Behind = append(r.Behind, p.Node)
		}
	}
	r.Agree = len(r.Behind)+len(r.NotReady)+len(r.Unreachable) == 0
	return r
}

// summary is ping's last line.
func (r pingReport) summary() string {
	if r.Agree {
		return fmt.Sprintf("all nodes agree on version %d", r.Version)
	}
	var parts []string
	byID := map[string]probe{}
	for _, p := range r.Nodes {
		byID[p.Node] = p
	}
	if len(r.Behind) > 0 {
		var ls []string
		for _, id := range r.Behind {
			ls = append(ls, fmt.Sprintf("%s (at %d)", id, byID[id].MapVersion))
		}
		parts = append(parts, fmt.Sprintf("behind version %d: %s", r.Version, strings.Join(ls, ", ")))
	}
	if len(r.NotReady) > 0 {
		parts = append(parts, "not ready: "+strings.Join(r.NotReady, ", "))
	}
	if len(r.Unreachable) > 0 {
		parts = append(parts, "unreachable: "+strings.Join(r.Unreachable, ", "))
	}
	return strings.Join(parts, "; ")
}

// ping probes every node of the map of the node at addr until they agree
// on a version or wait has passed.
func (s *session) ping(ctx context.Context, addr string, wait time.Duration) (pingReport, error) {
	deadline := time.Now().Add(wait)
	for {
		m, err := s.getMap(ctx, addr)
		if err != nil {
			return pingReport{}, err
		}
		r := assess(m.Version, s.probeAll(ctx, m))
		if r.Agree || !time.Now().Before(deadline) {
			return r, nil
		}
		if err := timex.Sleep(ctx, 100*time.Millisecond); err != nil {
			return pingReport{}, err
		}
	}
}

// printPing prints a ping report and returns ErrNotAgreed unless every
// node agrees.
func (s *session) printPing(r pingReport) error {
	t := newTable("NODE", "GRPC", "VERSION", "RAFT STATE", "LEADER", "LATENCY", "STATUS")
	for _, p := range r.Nodes {
		lat := "-"
		if p.Reachable {
			lat = fmt.Sprintf("%.1fms", p.LatencyMS)
		}
		t.add(p.Node, p.GRPCAddr, versionCell(p), dash(p.RaftState), dash(p.Leader), lat, statusCell(p))
	}
	if err := s.emit(r, t); err != nil {
		return err
	}
	if !s.o.json {
		fmt.Fprintln(s.out, r.summary())
	}
	if !r.Agree {
		return fmt.Errorf("%w: %s", ErrNotAgreed, r.summary())
	}
	return nil
}

func newPingCommand(o *options) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Check that every node answers and routes with the same map version",
		Long: `Ask every node of the map for its Status: the map version its router routes
with, its raft state and leader, and the round-trip time. Prints "all nodes
agree on version N", or the nodes that are behind, not ready or unreachable.

With --wait, ping polls until the nodes agree or the wait is over. The exit
status is 1 if any node is unreachable, not ready or behind at the end.`,
		Example: `  ops ping
  ops ping --wait 10s   # after a change, until every node has applied it`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			r, err := s.ping(ctx, s.o.addr, wait)
			if err != nil {
				return err
			}
			return s.printPing(r)
		}),
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "keep polling this long for the nodes to agree")
	return cmd
}

func newTablesCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "tables",
		Short: "List the site's tables",
		Long: `List the tables of the shard map: name, kind (content or index), the number
of forwardings and the shard trees they point to.`,
		Example: `  ops tables
  ops tables --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			type tableRow struct {
				Name        string            `json:"name"`
				Kind        gizzard.TableKind `json:"kind"`
				Forwardings int               `json:"forwardings"`
				Roots       []string          `json:"roots"`
			}
			rows := []tableRow{}
			t := newTable("TABLE", "KIND", "FORWARDINGS", "ROOTS")
			for _, name := range slices.Sorted(maps.Keys(m.Tables)) {
				fs := m.Forwardings[name]
				roots := []string{}
				for _, f := range fs {
					if !slices.Contains(roots, f.Root) {
						roots = append(roots, f.Root)
					}
				}
				rows = append(rows, tableRow{name, m.Tables[name].Kind, len(fs), roots})
				t.add(name, string(m.Tables[name].Kind), strconv.Itoa(len(fs)), dash(strings.Join(roots, " ")))
			}
			return s.emit(rows, t)
		}),
	}
}

// parents maps each linked shard of m to its parent.
func parents(m *gizzard.Map) map[string]string {
	out := map[string]string{}
	for id, sh := range m.Shards {
		for _, l := range sh.Children {
			out[l.Child] = id
		}
	}
	return out
}

// shardSizes asks each node holding a physical shard of m for the sizes of
// its shards: node -> shard -> bytes, and node -> error for nodes that did
// not answer.
func (s *session) shardSizes(ctx context.Context, m *gizzard.Map) (map[string]map[string]uint64, map[string]string) {
	sizes, errs := map[string]map[string]uint64{}, map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range sortedNodeIDs(m) {
		if len(m.LeavesOnNode(id)) == 0 {
			continue
		}
		wg.Go(func() {
			got, err := s.listShards(ctx, m.Nodes[id].GRPCAddr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[id] = err.Error()
				return
			}
			sizes[id] = got
		})
	}
	wg.Wait()
	return sizes, errs
}

// listShards returns the size of each shard of the node at addr.
func (s *session) listShards(ctx context.Context, addr string) (map[string]uint64, error) {
	a, err := s.admin(addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	resp, err := a.ListShards(rctx, &pb.ListShardsRequest{})
	if err != nil {
		return nil, s.rpcErr("list shards of", addr, err)
	}
	out := map[string]uint64{}
	for _, sh := range resp.Shards {
		out[sh.Name] = sh.SizeBytes
	}
	return out, nil
}

func newShardsCommand(o *options) *cobra.Command {
	var sizes bool
	var onNode string
	cmd := &cobra.Command{
		Use:   "shards",
		Short: "List every shard of the map",
		Long: `List every shard of the map, physical and logical: id, kind, the node of a
physical shard, its parent, and its children with their weights (child:weight).

With --sizes, each node holding physical shards is asked (ShardAdmin.ListShards)
for their estimated size on disk.`,
		Example: `  ops shards
  ops shards --sizes --node node-1`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			if onNode != "" {
				if _, ok := m.Nodes[onNode]; !ok {
					return fmt.Errorf("node %q is not in the map", onNode)
				}
			}
			var sz map[string]map[string]uint64
			var szErr map[string]string
			if sizes {
				sz, szErr = s.shardSizes(ctx, m)
			}
			type shardRow struct {
				ID        string         `json:"id"`
				Kind      gizzard.Kind   `json:"kind"`
				Node      string         `json:"node,omitempty"`
				Parent    string         `json:"parent,omitempty"`
				Children  []gizzard.Link `json:"children"`
				SizeBytes *uint64        `json:"size_bytes,omitempty"`
				SizeError string         `json:"size_error,omitempty"`
			}
			header := []string{"SHARD", "KIND", "NODE", "PARENT", "CHILDREN"}
			if sizes {
				header = append(header, "SIZE")
			}
			t := newTable(header...)
			rows := []shardRow{}
			ps := parents(m)
			for _, id := range slices.Sorted(maps.Keys(m.Shards)) {
				sh := m.Shards[id]
				if onNode != "" && sh.Node != onNode {
					continue
				}
				r := shardRow{ID: id, Kind: sh.Kind, Node: sh.Node, Parent: ps[id], Children: sh.Children}
				if r.Children == nil {
					r.Children = []gizzard.Link{}
				}
				cells := []string{id, string(sh.Kind), dash(sh.Node), dash(r.Parent), dash(childrenString(sh.Children))}
				if sizes {
					cell := "-"
					if sh.Kind == gizzard.KindPhysical {
						if b, ok := sz[sh.Node][id]; ok {
							r.SizeBytes = &b
							cell = humanBytes(b)
						} else if e, ok := szErr[sh.Node]; ok {
							r.SizeError, cell = e, "?"
						} else {
							r.SizeError = fmt.Sprintf("node %q does not hold it", sh.Node)
							cell = "missing"
						}
					}
					cells = append(cells, cell)
				}
				rows = append(rows, r)
				t.add(cells...)
			}
			if err := s.emit(rows, t); err != nil {
				return err
			}
			if !s.o.json {
				for _, id := range slices.Sorted(maps.Keys(szErr)) {
					fmt.Fprintf(s.errOut, "sizes of node %s: %s\n", id, szErr[id])
				}
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&sizes, "sizes", false, "ask the nodes for the size of each physical shard")
	cmd.Flags().StringVar(&onNode, "node", "", "only the physical shards of this node")
	return cmd
}

func newForwardingsCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "forwardings [TABLE]",
		Short: "List the forwardings of every table, or of one",
		Long: `List forwardings: a key of TABLE whose hash is at least BASE (and below the
next base) goes to the shard tree rooted at ROOT. Without TABLE, every
table's forwardings are listed.`,
		Example: `  ops forwardings
  ops forwardings statuses --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			names := slices.Sorted(maps.Keys(m.Tables))
			if len(args) == 1 {
				if _, ok := m.Tables[args[0]]; !ok {
					return fmt.Errorf("table %q does not exist (tables: %s)", args[0], strings.Join(names, ", "))
				}
				names = args
			}
			type fwdRow struct {
				Table   string `json:"table"`
				Base    uint64 `json:"base"`
				BaseHex string `json:"base_hex"`
				Root    string `json:"root"`
			}
			rows := []fwdRow{}
			t := newTable("TABLE", "BASE", "ROOT")
			for _, name := range names {
				for _, f := range m.Forwardings[name] {
					rows = append(rows, fwdRow{f.Table, f.Base, hex64(f.Base), f.Root})
					t.add(f.Table, hex64(f.Base), f.Root)
				}
			}
			return s.emit(rows, t)
		}),
	}
}

// treeNode is a shard tree as JSON.
type treeNode struct {
	ID       string       `json:"id"`
	Kind     gizzard.Kind `json:"kind"`
	Node     string       `json:"node,omitempty"`
	Weight   int          `json:"weight,omitempty"`
	Missing  bool         `json:"missing,omitempty"`
	Children []treeNode   `json:"children,omitempty"`
}

// buildTree returns the tree rooted at id. A shard the map lacks, or one
// reached twice (a broken map), ends its branch.
func buildTree(m *gizzard.Map, id string, weight int, seen map[string]bool) treeNode {
	sh, ok := m.Shards[id]
	if !ok || seen[id] {
		return treeNode{ID: id, Weight: weight, Missing: true}
	}
	seen[id] = true
	n := treeNode{ID: id, Kind: sh.Kind, Node: sh.Node, Weight: weight}
	for _, l := range sh.Children {
		n.Children = append(n.Children, buildTree(m, l.Child, l.Weight, seen))
	}
	return n
}

// label describes a tree node: "default-000 (physical on node-0)".
func (n treeNode) label(parentKind gizzard.Kind) string {
	if n.Missing {
		return n.ID + " (missing or reached twice)"
	}
	d := string(n.Kind)
	if n.Node != "" {
		d += " on " + n.Node
	}
	if parentKind == gizzard.KindReplicating && n.Weight != 1 {
		d += fmt.Sprintf(", weight %d", n.Weight)
	}
	return n.ID + " (" + d + ")"
}

// renderTree draws a tree with box-drawing characters.
func renderTree(b *strings.Builder, n treeNode) {
	b.WriteString(n.label(""))
	b.WriteByte('\n')
	renderChildren(b, n, "")
}

func renderChildren(b *strings.Builder, n treeNode, prefix string) {
	for i, c := range n.Children {
		branch, next := "├── ", "│   "
		if i == len(n.Children)-1 {
			branch, next = "└── ", "    "
		}
		b.WriteString(prefix + branch + c.label(n.Kind) + "\n")
		renderChildren(b, c, prefix+next)
	}
}

func newTreeCommand(o *options) *cobra.Command {
	tree := &cobra.Command{
		Use:   "tree",
		Short: "Show shard trees",
		Long:  `Show the shard trees of the map; see "tree show".`,
		Example: `  ops tree show
  ops tree show rep-000`,
		RunE: groupRunE,
	}
	tree.AddCommand(&cobra.Command{
		Use:   "show [ROOT...]",
		Short: "Draw shard trees, every root's by default",
		Long: `Draw the shard trees rooted at the given shards (default: every shard
without a parent), one line per shard with its kind and, for a physical
shard, its node; children of a replicating shard show their weight unless 1.`,
		Example: `  ops tree show
  rep-000 (replicating)
  ├── default-000 (physical on node-0)
  └── default-000-r1 (write_only)
      └── default-000-r1-p (physical on node-1)

  ops tree show rep-003 rep-004 --json`,
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			roots := args
			if len(roots) == 0 {
				roots = m.Roots()
			}
			trees := []treeNode{}
			for _, id := range roots {
				if _, ok := m.Shards[id]; !ok {
					return fmt.Errorf("shard %q does not exist", id)
				}
				trees = append(trees, buildTree(m, id, 0, map[string]bool{}))
			}
			if s.o.json {
				return s.printJSON(trees)
			}
			var b strings.Builder
			for _, t := range trees {
				renderTree(&b, t)
			}
			_, err = fmt.Fprint(s.out, b.String())
			return err
		}),
	})
	return tree
}

// lookupResult is where a key goes.
type lookupResult struct {
	Table        string              `json:"table"`
	Key          *string             `json:"key,omitempty"`
	Owner        *uint64             `json:"owner,omitempty"`
	Hash         uint64              `json:"hash"`
	HashHex      string              `json:"hash_hex"`
	Base         uint64              `json:"forwarding_base"`
	BaseHex      string              `json:"forwarding_base_hex"`
	Root         string              `json:"root"`
	WriteTargets []gizzard.Leaf      `json:"write_targets"`
	Rejected     []gizzard.Rejection `json:"rejected,omitempty"`
	Dropped      bool                `json:"dropped,omitempty"`
	ReadOrder    []gizzard.Leaf      `json:"read_order"`
	ReadError    string              `json:"read_error,omitempty"`
}

// lookup routes a hash of table through m as the router would.
func lookup(m *gizzard.Map, table string, h uint64) (lookupResult, error) {
	r := lookupResult{Table: table, Hash: h, HashHex: hex64(h), WriteTargets: []gizzard.Leaf{}, ReadOrder: []gizzard.Leaf{}}
	f, err := m.Lookup(table, h)
	if err != nil {
		return r, err
	}
	r.Base, r.BaseHex, r.Root = f.Base, hex64(f.Base), f.Root
	wp, err := m.PlanWrite(f.Root)
	if err != nil {
		return r, err
	}
	if wp.Targets != nil {
		r.WriteTargets = wp.Targets
	}
	r.Rejected, r.Dropped = wp.Rejected, wp.Dropped
	if rd, err := m.PlanRead(f.Root, h); err != nil {
		r.ReadError = err.Error()
	} else {
		r.ReadOrder = rd
	}
	return r, nil
}

func newLookupCommand(o *options) *cobra.Command {
	var owner uint64
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:   "lookup TABLE KEY | lookup TABLE --owner N",
		Short: "Show where a key or an index owner is routed",
		Long: `Route a content key (TABLE KEY) or an index owner (TABLE --owner N) through
the map, as a node's router does: its routing hash (gizzard.Hash of the key,
or gizzard.OwnerHash of the owner), the forwarding it falls in, the root of its
shard tree, the physical shards a write goes to (and the wrappers that refuse
it), and the order a read tries the replicas in. The router draws a random
pick per read; lookup shows the order for pick = the key's hash.`,
		Example: `  ops lookup statuses 1001
  ops lookup user_timeline --owner 42 --json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			tname := args[0]
			t, ok := m.Tables[tname]
			if !ok {
				return fmt.Errorf("table %q does not exist", tname)
			}
			ownerGiven := cmd.Flags().Changed("owner")
			var h uint64
			var key *string
			var own *uint64
			switch {
			case len(args) == 2 && ownerGiven:
				return errors.New("give KEY or --owner, not both")
			case len(args) == 2:
				if t.Kind == gizzard.TableIndex {
					return fmt.Errorf("table %q is an index table: its entries are routed by owner; use --owner N", tname)
				}
				k := args[1]
				key, h = &k, gizzard.Hash([]byte(k))
			case ownerGiven:
				if t.Kind == gizzard.TableContent {
					return fmt.Errorf("table %q is a content table: give a KEY, not --owner", tname)
				}
				ow := owner
				own, h = &ow, gizzard.OwnerHash(owner)
			default:
				return errors.New("give a KEY (content tables) or --owner N (index tables)")
			}
			r, err := lookup(m, tname, h)
			if err != nil {
				return err
			}
			r.Key, r.Owner = key, own
			if s.o.json {
				return s.printJSON(r)
			}
			tb := &table{}
			tb.add("table", fmt.Sprintf("%s (%s)", tname, t.Kind))
			if key != nil {
				tb.add("key", strconv.Quote(*key))
			} else {
				tb.add("owner", strconv.FormatUint(*own, 10))
			}
			tb.add("hash", r.HashHex)
			tb.add("forwarding", fmt.Sprintf("%s -> %s", r.BaseHex, r.Root))
			tb.add("writes", dash(leavesString(r.WriteTargets)))
			for _, rj := range r.Rejected {
				tb.add("refused by", rj.Reason)
			}
			if r.Dropped {
				tb.add("dropped", "a black_hole drops the write on some path")
			}
			if r.ReadError != "" {
				tb.add("reads", "none: "+r.ReadError)
			} else {
				tb.add("reads", leavesString(r.ReadOrder))
			}
			return s.printTable(tb)
		}),
	}
	cmd.Flags().Uint64Var(&owner, "owner", 0, "route an index owner instead of a content key")
	return cmd
}

func newAuditCommand(o *options) *cobra.Command {
	var limit int
	var full bool
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the map's audit log: who changed what, and when",
		Long: `Show the newest entries of the map's audit log, oldest first: the map
version each change produced, when it was proposed (UTC), who proposed it
(--who), from where, and its steps (shortened to one line unless --full).`,
		Example: `  ops audit
  ops audit --limit 0 --json   # every entry`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: must be 0 (all) or more", limit)
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			entries := m.Audit
			if limit > 0 && len(entries) > limit {
				entries = entries[len(entries)-limit:]
			}
			if entries == nil {
				entries = []gizzard.AuditEntry{}
			}
			t := newTable("VERSION", "TIME", "WHO", "FROM", "WHAT")
			for _, e := range entries {
				what := e.What
				if !full {
					what = shorten(what, auditWidth)
				}
				t.add(strconv.FormatUint(e.Version, 10), e.At.UTC().Format(time.RFC3339), e.Who, dash(e.From), what)
			}
			return s.emit(entries, t)
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "show this many newest entries; 0 shows all")
	cmd.Flags().BoolVar(&full, "full", false, "show every step of each change, however long")
	return cmd
}

// auditWidth is how much of a change's steps audit shows without --full.
const auditWidth = 100

// shorten cuts a "; "-separated list of steps to about width bytes, saying
// how many steps it left out.
func shorten(what string, width int) string {
	if len(what) <= width {
		return what
	}
	steps := strings.Split(what, "; ")
	kept := 0
	for n := 0; kept < len(steps) && (kept == 0 || n+len(steps[kept]) <= width); kept++ {
		n += len(steps[kept]) + 2
	}
	out := strings.Join(steps[:kept], "; ")
	if kept < len(steps) {
		out += fmt.Sprintf("; ... (%d more steps, see --full)", len(steps)-kept)
	}
	return out
}

func newVersionCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of the shard map",
		Long: `Print the version of the shard map held by the node at --addr: the number of
changes applied to it since the site was founded.`,
		Example: `  ops version
  ops version --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			if s.o.json {
				return s.printJSON(map[string]uint64{"version": m.Version})
			}
			_, err = fmt.Fprintln(s.out, m.Version)
			return err
		}),
	}
}
