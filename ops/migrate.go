package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Online migrations. Every step is one change of the map, made as a
// compare-and-swap on the migration's state, so a driver that crashes
// (or two that race) never applies a step twice; the copy's cursor is kept
// by the destination node with the data it covers. A driver is any ops
// process running "ops migrate", "ops migrate resume", "ops split" or
// "ops rebalance": it reads the migration's state and carries it on.

// DefaultRate is the copy throttle when --rate is not given.
const DefaultRate = "2MB/s"

// rateLimit is a copy throttle: bytes and records per second, 0 = none.
type rateLimit struct {
	Bytes, Records float64
}

// parseRate reads "20MB/s", "512KB/s", "5000rec/s", or "0"/"none" for no
// limit.
func parseRate(s string) (rateLimit, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "0" || t == "none" || t == "unlimited" {
		return rateLimit{}, nil
	}
	units := []struct {
		suffix  string
		scale   float64
		records bool
	}{
		{"rec/s", 1, true}, {"records/s", 1, true},
		{"gb/s", 1e9, false}, {"mb/s", 1e6, false}, {"kb/s", 1e3, false}, {"b/s", 1, false},
	}
	for _, u := range units {
		num, ok := strings.CutSuffix(t, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			break
		}
		if u.records {
			return rateLimit{Records: v}, nil
		}
		return rateLimit{Bytes: v * u.scale}, nil
	}
	return rateLimit{}, fmt.Errorf("--rate %q: want a positive number with MB/s, KB/s, GB/s or rec/s (e.g. 20MB/s, 5000rec/s), or 0 for no limit", s)
}

// nextGeneration returns the first of base.1, base.2, ... (base without
// its own generation suffix) that taken reports unused.
func nextGeneration(id string, taken func(string) bool) string {
	base := id
	if i := strings.LastIndexByte(id, '.'); i > 0 {
		if _, err := strconv.Atoi(id[i+1:]); err == nil {
			base = id[:i]
		}
	}
	if len(base) > gizzard.MaxNameBytes-8 {
		base = base[:gizzard.MaxNameBytes-8]
	}
	for g := 1; ; g++ {
		name := fmt.Sprintf("%s.%d", base, g)
		if !taken(name) {
			return name
		}
	}
}

// shardTaken reports whether id names a shard of m, or one of its
// migrations' planned shards.
func shardTaken(m *gizzard.Map) func(string) bool {
	return func(id string) bool {
		if _, ok := m.Shards[id]; ok {
			return true
		}
		for _, g := range m.ActiveMigrations() {
			if id == g.Dest || id == g.Wrapper || id == g.SourceWrapper || id == g.NewRoot {
				return true
			}
		}
		return false
	}
}

// migrationID names a new migration of source.
func migrationID(m *gizzard.Map, source string, now time.Time) string {
	base := source
	if len(base) > 40 {
		base = base[:40]
	}
	id := base + "-" + now.UTC().Format("20060102-150405")
	for i := 2; ; i++ {
		if _, ok := m.Migrations[id]; !ok {
			return id
		}
		id = fmt.Sprintf("%s-%s-%d", base, now.UTC().Format("20060102-150405"), i)
	}
}

// planMove records a move of physical shard source to node: the
// migration in state planned.
func planMove(m *gizzard.Map, source, node, dest, rate string, force bool, now time.Time) (gizzard.Migration, error) {
	var g gizzard.Migration
	sh, ok := m.Shards[source]
	if !ok {
		return g, fmt.Errorf("shard %q does not exist", source)
	}
	if sh.Kind != gizzard.KindPhysical {
		return g, fmt.Errorf("shard %q is %s: migrate moves a physical shard (see ops tree show)", source, sh.Kind)
	}
	root := m.Parent(source)
	if root == "" || m.Shards[root].Kind != gizzard.KindReplicating {
		return g, fmt.Errorf("shard %q is not directly under a replicating shard (its parent is %q): migrate moves a replica of a replicating shard", source, root)
	}
	if _, ok := m.Nodes[node]; !ok {
		return g, fmt.Errorf("node %q is not in the map (nodes: %s)", node, strings.Join(sortedNodeIDs(m), ", "))
	}
	if sh.Node == node {
		return g, fmt.Errorf("shard %q is on %q already", source, node)
	}
	for _, l := range leavesUnder(m, root) {
		if l.Node == node {
			return g, fmt.Errorf("node %q already holds %q under %q; a second replica on one node adds no redundancy", node, l.ID, root)
		}
	}
	if dest == "" {
		dest = nextGeneration(source, shardTaken(m))
	}
	g = gizzard.Migration{
		ID: migrationID(m, source, now), Kind: gizzard.MigrateMove, Root: root, Source: source, SourceNode: sh.Node,
		Dest: dest, DestNode: node, Wrapper: dest + wrapperSuffix, SourceWrapper: source + wrapperSuffix,
		State: gizzard.MigrationPlanned, Rate: rate, Force: force,
	}
	for _, id := range []string{g.Dest, g.Wrapper, g.SourceWrapper} {
		if err := gizzard.ValidName(id); err != nil {
			return g, fmt.Errorf("shard id: %w", err)
		}
		if shardTaken(m)(id) {
			return g, fmt.Errorf("shard %q exists already; choose another id with --shard", id)
		}
	}
	return g, nil
}

// treeRanges returns, per table, the hash ranges the forwardings send to
// root: [base, next base), hi 0 meaning up to 2^64.
func treeRanges(m *gizzard.Map, root string) []*pb.HashRange {
	var out []*pb.HashRange
	for _, t := range slices.Sorted(maps.Keys(m.Forwardings)) {
		fs := m.Forwardings[t]
		for i, f := range fs {
			if f.Root != root {
				continue
			}
			r := &pb.HashRange{Table: t, Lo: f.Base}
			if i+1 < len(fs) {
				r.Hi = fs[i+1].Base
			}
			out = append(out, r)
		}
	}
	return out
}

// splitRanges cuts the ranges of a tree at at: the parts at or above it
// (moved by a split) and below it (kept).
func splitRanges(rs []*pb.HashRange, at uint64) (moved, kept []*pb.HashRange) {
	for _, r := range rs {
		if at > r.Lo && (r.Hi == 0 || at < r.Hi) {
			moved = append(moved, &pb.HashRange{Table: r.Table, Lo: at, Hi: r.Hi})
			kept = append(kept, &pb.HashRange{Table: r.Table, Lo: r.Lo, Hi: at})
		} else {
			kept = append(kept, r)
		}
	}
	return moved, kept
}

// planSplit records a split of the tree at root: the hashes from at up go
// to a new tree over a new physical shard on node.
func planSplit(m *gizzard.Map, root, node, dest, newRoot string, at uint64, haveAt bool, rate string, force bool, now time.Time) (gizzard.Migration, error) {
	var g gizzard.Migration
	sh, ok := m.Shards[root]
	if !ok {
		return g, fmt.Errorf("shard %q does not exist", root)
	}
	if sh.Kind != gizzard.KindReplicating || m.Parent(root) != "" {
		return g, fmt.Errorf("shard %q is not the replicating root of a tree: split takes a tree that forwardings point to (see ops forwardings)", root)
	}
	rs := treeRanges(m, root)
	if len(rs) == 0 {
		return g, fmt.Errorf("no forwarding points to %q: nothing to split", root)
	}
	if !haveAt {
		// The middle of the first range; every range must contain it.
		r := rs[0]
		hi := r.Hi
		if hi == 0 {
			at = r.Lo + (math.MaxUint64-r.Lo)/2 + 1
		} else {
			at = r.Lo + (hi-r.Lo)/2
		}
	}
	moved, _ := splitRanges(rs, at)
	if len(moved) != len(rs) {
		return g, fmt.Errorf("hash %#016x is not strictly inside every range forwarded to %q (%s); give --at inside all of them", at, root, rangesString(rs))
	}
	if _, ok := m.Nodes[node]; !ok {
		return g, fmt.Errorf("node %q is not in the map (nodes: %s)", node, strings.Join(sortedNodeIDs(m), ", "))
	}
	leaves := leavesUnder(m, root)
	if len(leaves) == 0 {
		return g, fmt.Errorf("tree %q has no physical shard to copy from", root)
	}
	source, sourceNode := leaves[0].ID, leaves[0].Node
	if rd, err := m.PlanRead(root, 0); err == nil && len(rd) > 0 {
		source, sourceNode = rd[0].Shard, rd[0].Node
	}
	taken := shardTaken(m)
	if dest == "" {
		dest = nextGeneration(source, taken)
	}
	if newRoot == "" {
		newRoot = nextGeneration(root, taken)
	}
	g = gizzard.Migration{
		ID: migrationID(m, root, now), Kind: gizzard.MigrateSplit, Root: root, Source: source, SourceNode: sourceNode,
		Dest: dest, DestNode: node, Wrapper: dest + wrapperSuffix, NewRoot: newRoot, SplitAt: at,
		State: gizzard.MigrationPlanned, Rate: rate, Force: force,
	}
	for _, id := range []string{g.Dest, g.Wrapper, g.NewRoot} {
		if err := gizzard.ValidName(id); err != nil {
			return g, fmt.Errorf("shard id: %w", err)
		}
		if taken(id) {
			return g, fmt.Errorf("shard %q exists already; choose another id with --shard or --new-root", id)
		}
	}
	return g, nil
}

func rangesString(rs []*pb.HashRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		hi := "2^64"
		if r.Hi != 0 {
			hi = fmt.Sprintf("%#016x", r.Hi)
		}
		parts[i] = fmt.Sprintf("%s [%#016x, %s)", r.Table, r.Lo, hi)
	}
	return strings.Join(parts, ", ")
}

// setState is the step that moves g to state, from the state it has. It
// comes first in its change, so that a driver that lost a race fails on it
// (ErrStateMoved) rather than on a step the winner already took.
func setState(g gizzard.Migration, state gizzard.MigrationState, note string) gizzard.Step {
	from := g.State
	g.State = state
	if note != "" {
		g.Note = note
	}
	return gizzard.Step{Op: gizzard.OpSetMigration, Migration: &g, Expect: from}
}

// attachSteps put Dest, behind its write_only wrapper, under Root: from
// this change on, every write of the tree also goes to Dest.
func attachSteps(g gizzard.Migration) []gizzard.Step {
	return []gizzard.Step{
		setState(g, gizzard.MigrationCopying, ""),
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: g.Dest, Kind: gizzard.KindPhysical, Node: g.DestNode}},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: g.Wrapper, Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: g.Dest, Weight: 1}}}},
		{Op: gizzard.OpAddLink, Parent: g.Root, Child: g.Wrapper, Weight: 1},
	}
}

// cutoverSteps make Dest serve reads. A move keeps Source written (behind
// a write_only wrapper) until cleanup, so that cancel can still go back; a
// split points the upper ranges' forwardings at the new tree.
func cutoverSteps(m *gizzard.Map, g gizzard.Migration) ([]gizzard.Step, error) {
	steps := []gizzard.Step{
		setState(g, gizzard.MigrationCutover, ""),
		{Op: gizzard.OpRemoveLink, Parent: g.Wrapper, Child: g.Dest},
	}
	switch g.Kind {
	case gizzard.MigrateMove:
		w := m.Shards[g.Root].Children
		weight := 1
		for _, l := range w {
			if l.Child == g.Source {
				weight = l.Weight
			}
		}
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpReplaceChild, Parent: g.Root, Child: g.Wrapper, NewChild: g.Dest},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Wrapper},
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.Source},
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: g.SourceWrapper, Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: g.Source, Weight: 1}}}},
			gizzard.Step{Op: gizzard.OpAddLink, Parent: g.Root, Child: g.SourceWrapper, Weight: weight},
		)
		if weight != 1 {
			steps = append(steps, gizzard.Step{Op: gizzard.OpSetWeight, Parent: g.Root, Child: g.Dest, Weight: weight})
		}
	case gizzard.MigrateSplit:
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.Wrapper},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Wrapper},
			gizzard.Step{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: g.NewRoot, Kind: gizzard.KindReplicating, Children: []gizzard.Link{{Child: g.Dest, Weight: 1}}}},
		)
		moved, _ := splitRanges(treeRanges(m, g.Root), g.SplitAt)
		if len(moved) == 0 {
			return nil, fmt.Errorf("no range forwarded to %q contains the split point %#016x any more", g.Root, g.SplitAt)
		}
		for _, r := range moved {
			steps = append(steps, gizzard.Step{Op: gizzard.OpSetForwarding, Forwarding: &gizzard.Forwarding{Table: r.Table, Base: g.SplitAt, Root: g.NewRoot}})
		}
	}
	return steps, nil
}

// cleanupSteps take a moved Source out of the map; a split changes nothing
// but the state (its source keeps serving the lower ranges).
func cleanupSteps(g gizzard.Migration) []gizzard.Step {
	steps := []gizzard.Step{setState(g, gizzard.MigrationCleanup, "")}
	if g.Kind == gizzard.MigrateMove {
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.SourceWrapper},
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.SourceWrapper, Child: g.Source},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.SourceWrapper},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Source},
		)
	}
	return steps
}

// uncutSteps undo a move's cutover: the source serves reads again and the
// destination goes back behind its write_only wrapper, both still written;
// the migration is verified again.
func uncutSteps(m *gizzard.Map, g gizzard.Migration) []gizzard.Step {
	w := linkWeightOf(m, g.Root, g.Dest)
	return []gizzard.Step{
		setState(g, gizzard.MigrationVerified, "cutover undone for a cancel"),
		{Op: gizzard.OpRemoveLink, Parent: g.SourceWrapper, Child: g.Source},
		{Op: gizzard.OpReplaceChild, Parent: g.Root, Child: g.SourceWrapper, NewChild: g.Source},
		{Op: gizzard.OpDeleteShard, ShardID: g.SourceWrapper},
		{Op: gizzard.OpSetWeight, Parent: g.Root, Child: g.Source, Weight: linkWeightOf(m, g.Root, g.SourceWrapper)},
		{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.Dest},
		{Op: gizzard.OpCreateShard, Shard: &gizzard.Shard{ID: g.Wrapper, Kind: gizzard.KindWriteOnly, Children: []gizzard.Link{{Child: g.Dest, Weight: 1}}}},
		{Op: gizzard.OpAddLink, Parent: g.Root, Child: g.Wrapper, Weight: w},
	}
}

// ErrCannotCancel is returned for a migration past the point of return.
var ErrCannotCancel = errors.New("ops: the migration can no longer be cancelled")

// cancelSteps roll g back to the layout it started from.
func cancelSteps(m *gizzard.Map, g gizzard.Migration, note string) ([]gizzard.Step, error) {
	steps := []gizzard.Step{setState(g, gizzard.MigrationCancelled, note)}
	switch g.State {
	case gizzard.MigrationPlanned:
	case gizzard.MigrationCopying, gizzard.MigrationCopied, gizzard.MigrationVerified:
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.Wrapper},
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Wrapper, Child: g.Dest},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Wrapper},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Dest},
		)
	case gizzard.MigrationCutover:
		if g.Kind == gizzard.MigrateSplit {
			return nil, fmt.Errorf("%w: split %s cut over, and its old tree has not been written in the moved ranges since; move the new tree instead (ops migrate %s --to NODE)", ErrCannotCancel, g.ID, g.Dest)
		}
		steps = append(steps,
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.Dest},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.Dest},
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.Root, Child: g.SourceWrapper},
			gizzard.Step{Op: gizzard.OpRemoveLink, Parent: g.SourceWrapper, Child: g.Source},
			gizzard.Step{Op: gizzard.OpDeleteShard, ShardID: g.SourceWrapper},
			gizzard.Step{Op: gizzard.OpAddLink, Parent: g.Root, Child: g.Source, Weight: linkWeightOf(m, g.Root, g.SourceWrapper)},
		)
	default:
		return nil, fmt.Errorf("%w: %s is %s", ErrCannotCancel, g.ID, g.State)
	}
	return steps, nil
}

// linkWeightOf returns the weight of parent's link to child (1 if none).
func linkWeightOf(m *gizzard.Map, parent, child string) int {
	for _, l := range m.Shards[parent].Children {
		if l.Child == child {
			return l.Weight
		}
	}
	return 1
}

// driver carries migrations on.
type driver struct {
	s *session
	// out receives step lines; progress, the copy's progress display.
	out      io.Writer
	terminal bool
	// poll is how often the map is read while waiting.
	poll time.Duration
	// mu serialises output of parallel drivers.
	mu *sync.Mutex
	// stopAt, when set, makes run return errStopped on reaching that
	// state, before acting on it (tests stop a migration at each step).
	stopAt gizzard.MigrationState
}

var errStopped = errors.New("ops: driver stopped as asked")

func (d *driver) say(id, format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "%s  %s: %s\n", time.Now().Format("15:04:05"), id, fmt.Sprintf(format, args...))
}

// ErrCancelled is returned by a driver whose migration was cancelled.
var ErrCancelled = errors.New("ops: migration cancelled")

// migration reads migration id from the site's map.
func (d *driver) migration(ctx context.Context, id string) (*gizzard.Map, gizzard.Migration, error) {
	m, err := d.s.siteMap(ctx)
	if err != nil {
		return nil, gizzard.Migration{}, err
	}
	g, ok := m.Migrations[id]
	if !ok {
		return nil, g, fmt.Errorf("migration %q does not exist (see ops migrations --all)", id)
	}
	return m, g, nil
}

// change proposes steps; a compare-and-swap that lost to another driver
// is not an error: the caller reads the state again.
func (d *driver) change(ctx context.Context, steps []gizzard.Step) (uint64, bool, error) {
	v, err := d.s.proposeAt(ctx, d.s.o.addr, steps)
	if err != nil {
		if strings.Contains(err.Error(), "the migration moved") {
			return 0, false, nil
		}
		return 0, false, err
	}
	return v, true, nil
}

// retryable reports whether a failed step is worth trying again: a node
// down, slow, or not caught up yet.
func retryable(err error) bool {
	var re *rpcError
	if errors.As(err, &re) {
		err = re.err
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.FailedPrecondition, codes.ResourceExhausted, codes.Internal, codes.Unknown, codes.NotFound:
		return true
	}
	return false
}

// run drives migration id to its end: done, or cancelled (ErrCancelled).
func (d *driver) run(ctx context.Context, id string) error {
	backoff := 100 * time.Millisecond
	fail := func(what string, err error) error {
		if !retryable(err) {
			return fmt.Errorf("%s: %s: %w", id, what, err)
		}
		d.say(id, "%s: %v; retrying in %s", what, err, backoff.Round(time.Millisecond))
		if err := timex.Sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, 5*time.Second)
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, g, err := d.migration(ctx, id)
		if err != nil {
			if e := fail("read the map", err); e != nil {
				return e
			}
			continue
		}
		if d.stopAt != "" && g.State == d.stopAt {
			return errStopped
		}
		if g.Paused && !g.State.Final() {
			d.say(id, "paused at %s; waiting for ops migrate resume %s", g.State, id)
			if err := d.waitUnpaused(ctx, id); err != nil {
				return err
			}
			continue
		}
		var steps []gizzard.Step
		switch g.State {
		case gizzard.MigrationDone:
			d.say(id, "done: %s", describeMigration(g))
			return nil
		case gizzard.MigrationCancelled:
			return fmt.Errorf("%w: %s (%s)", ErrCancelled, id, g.Note)
		case gizzard.MigrationPlanned:
			d.say(id, "attaching %s on %s behind write_only %s under %s", g.Dest, g.DestNode, g.Wrapper, g.Root)
			steps = attachSteps(g)
		case gizzard.MigrationCopying:
			done, err := d.copy(ctx, m, g)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if e := fail("copy", err); e != nil {
					return e
				}
				continue
			}
			if !done { // paused or cancelled meanwhile
				continue
			}
			steps = []gizzard.Step{setState(g, gizzard.MigrationCopied, "")}
		case gizzard.MigrationCopied:
			rep, err := d.verify(ctx, m, g)
			if err != nil {
				if e := fail("verify", err); e != nil {
					return e
				}
				continue
			}
			note := rep.summary()
			d.say(id, "%s", note)
			if !rep.ok() {
				if !g.Force {
					return fmt.Errorf("%s: %w; cutover refused. Cancel it (ops migrate cancel %s) or force it (ops migrate resume %s --force)", id, errVerifyFailed, id, id)
				}
				note = "forced past a failed verification: " + note
			}
			steps = []gizzard.Step{setState(g, gizzard.MigrationVerified, note)}
		case gizzard.MigrationVerified:
			if err := d.drain(ctx, m, g); err != nil {
				if e := fail("wait for the copy to catch up", err); e != nil {
					return e
				}
				continue
			}
			d.say(id, "cutting over: %s serves reads", g.Dest)
			if steps, err = cutoverSteps(m, g); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
		case gizzard.MigrationCutover:
			// A node still on an older map reads from the source, which
			// gets every write until cleanup: take it out only once every
			// node reads from the destination.
			if err := d.awaitAll(ctx, lastChange(m, fmt.Sprintf("set_migration %q", g.ID))); err != nil {
				if e := fail("wait for every node to cut over", err); e != nil {
					return e
				}
				continue
			}
			if g.Kind == gizzard.MigrateMove {
				d.say(id, "cleanup: %s leaves the map", g.Source)
			}
			steps = cleanupSteps(g)
		case gizzard.MigrationCleanup:
			if err := d.cleanup(ctx, m, g); err != nil {
				if e := fail("cleanup", err); e != nil {
					return e
				}
				continue
			}
			steps = []gizzard.Step{setState(g, gizzard.MigrationDone, "")}
		default:
			return fmt.Errorf("%s: unknown state %q", id, g.State)
		}
		if _, _, err := d.change(ctx, steps); err != nil {
			if e := fail("change the map", err); e != nil {
				return e
			}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

var errVerifyFailed = errors.New("verification failed")

func describeMigration(g gizzard.Migration) string {
	if g.Kind == gizzard.MigrateSplit {
		return fmt.Sprintf("split %s at %#016x: %s on %s under %s", g.Root, g.SplitAt, g.Dest, g.DestNode, g.NewRoot)
	}
	return fmt.Sprintf("moved %s to %s on %s under %s", g.Source, g.Dest, g.DestNode, g.Root)
}

func (d *driver) waitUnpaused(ctx context.Context, id string) error {
	for {
		if err := timex.Sleep(ctx, d.poll); err != nil {
			return err
		}
		_, g, err := d.migration(ctx, id)
		if err != nil {
			continue
		}
		if !g.Paused || g.State.Final() {
			return nil
		}
	}
}

// copyRanges returns the hash ranges a migration copies (nil: all).
func copyRanges(m *gizzard.Map, g gizzard.Migration) []*pb.HashRange {
	if g.Kind != gizzard.MigrateSplit {
		return nil
	}
	moved, _ := splitRanges(treeRanges(m, g.Root), g.SplitAt)
	return moved
}

// copy runs the destination's CopyShard until the copy is done (true),
// or the migration is paused, cancelled or moved on (false).
func (d *driver) copy(ctx context.Context, m *gizzard.Map, g gizzard.Migration) (bool, error) {
	rate, err := parseRate(g.Rate)
	if err != nil {
		rate, _ = parseRate(DefaultRate)
	}
	src, ok := m.Shards[g.Source]
	if !ok {
		return false, fmt.Errorf("source shard %q is not in the map", g.Source)
	}
	srcAddr, err := nodeAddr(m, src.Node)
	if err != nil {
		return false, err
	}
	dstAddr, err := nodeAddr(m, g.DestNode)
	if err != nil {
		return false, err
	}
	a, err := d.s.admin(dstAddr)
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Stop copying as soon as the migration is paused or cancelled.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			if timex.Sleep(cctx, d.poll) != nil {
				return
			}
			_, cur, err := d.migration(cctx, g.ID)
			if err == nil && (cur.Paused || cur.State != gizzard.MigrationCopying) {
				cancel()
				return
			}
		}
	}()
	defer func() { cancel(); <-stopped }()
	stream, err := a.CopyShard(cctx, &pb.CopyShardRequest{
		MigrationId: g.ID, SourceAddr: srcAddr, SourceShard: g.Source, DestShard: g.Dest,
		Ranges: copyRanges(m, g), MinMapVersion: m.Fence(g.Source),
		RateBytes: rate.Bytes, RateRecords: rate.Records,
	})
	if err != nil {
		return false, d.s.rpcErr("copy to", dstAddr, err)
	}
	var p *progress
	d.mu.Lock()
	label := fmt.Sprintf("%s %s→%s", g.ID, g.Source, g.DestNode)
	d.mu.Unlock()
	for {
		msg, err := stream.Recv()
		if err != nil {
			if p != nil {
				p.finish("interrupted")
			}
			if cctx.Err() != nil && ctx.Err() == nil {
				return false, nil // paused or cancelled
			}
			return false, d.s.rpcErr("copy to", dstAddr, err)
		}
		if p == nil {
			if msg.Resumed {
				d.say(g.ID, "copy resumes after %d records already copied", msg.ResumedRecords)
			} else {
				d.say(g.ID, "copying %s from %s to %s on %s (rate %s)", g.Source, src.Node, g.Dest, g.DestNode, rateString(g.Rate))
			}
			p = newProgress(d.out, d.terminal, label, time.Now)
		}
		if msg.TotalRecords > 0 || msg.TotalBytes > 0 {
			// The snapshot's size, plus what earlier runs copied before
			// the cursor (counted in both, an estimate either way).
			p.setTotal(max(msg.TotalRecords, msg.Records), max(msg.TotalBytes, msg.Bytes))
		}
		p.update(msg.Records, msg.Bytes)
		if msg.Done {
			p.finish("copied")
			return true, nil
		}
	}
}

func rateString(r string) string {
	if r == "" {
		return DefaultRate
	}
	if l, err := parseRate(r); err == nil && l == (rateLimit{}) {
		return "unlimited"
	}
	return r
}

// awaitSite waits until every reachable node of the site routes with map
// version v or newer. A node that cannot be reached is skipped: it loads
// the newest map before it serves again.
func (d *driver) awaitSite(ctx context.Context, v uint64) error { return d.await(ctx, v, false) }

// awaitAll is awaitSite where a node that cannot be reached is waited for.
func (d *driver) awaitAll(ctx context.Context, v uint64) error { return d.await(ctx, v, true) }

func (d *driver) await(ctx context.Context, v uint64, all bool) error {
	last := time.Now()
	for {
		m, err := d.s.siteMap(ctx)
		if err != nil {
			return err
		}
		var behind []string
		for _, p := range d.s.probeAll(ctx, m) {
			switch {
			case p.Reachable && p.MapVersion < v:
				behind = append(behind, fmt.Sprintf("%s (at %d)", p.Node, p.MapVersion))
			case !p.Reachable && all:
				behind = append(behind, fmt.Sprintf("%s (unreachable)", p.Node))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if time.Since(last) > 10*time.Second {
			d.say("site", "waiting for %s to apply map version %d", strings.Join(behind, ", "), v)
			last = time.Now()
		}
		if err := timex.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// drain waits until the destination holds every acknowledged write. Once
// every node routes by the map that made the tree's writes need every
// replica (the verified change, which also fences the tree's leaves), a
// write acknowledged under an older map may still owe a delivery to some
// leaf of the tree: a job in some node's journal, up to the journal's
// position at that moment. drain waits until no node holds such a job,
// pending or in the error queue, for any leaf of the tree (a fenced job is
// routed again to every leaf, the destination included). Every node must
// answer: one that is down may hold such a job.
func (d *driver) drain(ctx context.Context, m *gizzard.Map, g gizzard.Migration) error {
	if err := d.awaitAll(ctx, lastChange(m, fmt.Sprintf("set_migration %q", g.ID))); err != nil {
		return err
	}
	var targets []string
	for _, l := range leavesUnder(m, m.TreeRoot(g.Root)) {
		targets = append(targets, l.Node+"/"+l.ID)
	}
	marks := map[string]uint64{}
	last := time.Now()
	for {
		var pending []string
		for _, id := range sortedNodeIDs(m) {
			a, err := d.s.admin(m.Nodes[id].GRPCAddr)
			if err != nil {
				return err
			}
			for _, errorQueue := range []bool{false, true} {
				rctx, cancel := d.s.rpcCtx(ctx)
				r, err := a.ListJobs(rctx, &pb.ListJobsRequest{Targets: targets, MaxSeq: marks[id], Limit: 1, ErrorQueue: errorQueue})
				cancel()
				if err != nil {
					pending = append(pending, fmt.Sprintf("%s (unreachable: %s)", id, describeStatus(err, d.s.o.timeout)))
					break
				}
				if _, ok := marks[id]; !ok {
					// Jobs past this position were routed by the new map.
					marks[id] = max(r.JournalSeq, 1)
					r.Jobs = slices.DeleteFunc(r.Jobs, func(j *pb.Job) bool { return j.Seq > marks[id] })
				}
				if len(r.Jobs) > 0 {
					what := "jobs"
					if errorQueue {
						what = "error-queue jobs (ops errors list; retry them)"
					}
					pending = append(pending, fmt.Sprintf("%s (%s for %s from seq %d)", id, what, r.Jobs[0].Target, r.Jobs[0].Seq))
				}
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Since(last) > 10*time.Second {
			d.say(g.ID, "waiting for writes owed to the tree's replicas: %s", strings.Join(pending, ", "))
			last = time.Now()
		}
		if err := timex.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// lastChange returns the version of the newest change whose audit entry
// mentions what.
func lastChange(m *gizzard.Map, what string) uint64 {
	for i := len(m.Audit) - 1; i >= 0; i-- {
		if strings.Contains(m.Audit[i].What, what) {
			return m.Audit[i].Version
		}
	}
	return m.Version
}

// cleanup drops what the migration left behind once every router has
// stopped sending there: a move's source shard, or a split's moved ranges
// from the old tree and its kept ranges from the new shard.
func (d *driver) cleanup(ctx context.Context, m *gizzard.Map, g gizzard.Migration) error {
	if err := d.awaitSite(ctx, lastChange(m, fmt.Sprintf("set_migration %q", g.ID))); err != nil {
		return err
	}
	switch g.Kind {
	case gizzard.MigrateMove:
		return d.dropData(ctx, m, g.SourceNode, g.Source)
	case gizzard.MigrateSplit:
		// The forwardings now send the moved ranges to the new tree and
		// the others to the old one: each drops what is not its own.
		moved, kept := treeRanges(m, g.NewRoot), treeRanges(m, g.Root)
		for _, l := range leavesUnder(m, g.Root) {
			if err := d.purge(ctx, m, l.Node, l.ID, moved); err != nil {
				return err
			}
		}
		return d.purge(ctx, m, g.DestNode, g.Dest, kept)
	}
	return nil
}

func (d *driver) dropData(ctx context.Context, m *gizzard.Map, node, id string) error {
	addr, err := nodeAddr(m, node)
	if err != nil {
		return err
	}
	a, err := d.s.admin(addr)
	if err != nil {
		return err
	}
	rctx, cancel := d.s.rpcCtx(ctx)
	defer cancel()
	if _, err := a.DropShard(rctx, &pb.DropShardRequest{Name: id}); err != nil && status.Code(err) != codes.NotFound {
		return d.s.rpcErr("drop "+id+" on", addr, err)
	}
	return nil
}

func (d *driver) purge(ctx context.Context, m *gizzard.Map, node, id string, rs []*pb.HashRange) error {
	if len(rs) == 0 {
		return nil
	}
	addr, err := nodeAddr(m, node)
	if err != nil {
		return err
	}
	a, err := d.s.admin(addr)
	if err != nil {
		return err
	}
	resp, err := a.PurgeShard(ctx, &pb.PurgeShardRequest{Shard: id, Ranges: rs})
	if err != nil && status.Code(err) != codes.NotFound {
		return d.s.rpcErr("purge "+id+" on", addr, err)
	}
	if resp != nil {
		d.say("cleanup", "purged %d records of %s on %s outside its ranges", resp.Records, id, node)
	}
	return nil
}
