package ops

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/spf13/cobra"
)

// migrateFlags are the flags of the commands that start or resume a
// migration.
type migrateFlags struct {
	rate  string
	force bool
	poll  time.Duration
}

func (f *migrateFlags) register(cmd *cobra.Command, withRate bool) {
	if withRate {
		cmd.Flags().StringVar(&f.rate, "rate", DefaultRate, `copy throttle: MB/s, KB/s, GB/s or rec/s (e.g. 50MB/s, 5000rec/s); 0 for none`)
	}
	cmd.Flags().BoolVar(&f.force, "force", false, "cut over even if verification finds differences")
	cmd.Flags().DurationVar(&f.poll, "poll", 200*time.Millisecond, "how often the map is read while waiting (pause, cancel)")
	_ = cmd.Flags().MarkHidden("poll")
}

func (s *session) driver(f *migrateFlags, terminal bool) *driver {
	return &driver{s: s, out: s.out, terminal: terminal && isTerminal(s.out), poll: f.poll, mu: &sync.Mutex{}}
}

// start records a new migration and drives it.
func (s *session) startMigration(ctx context.Context, d *driver, g gizzard.Migration) error {
	m, err := s.siteMap(ctx)
	if err != nil {
		return err
	}
	if have, err := s.listShards(ctx, m.Nodes[g.DestNode].GRPCAddr); err != nil {
		return fmt.Errorf("cannot check the shards of %s before copying there: %w", g.DestNode, err)
	} else if _, ok := have[g.Dest]; ok {
		return fmt.Errorf("%s still holds a physical shard %q (from an earlier migration or replica, with its old data); drop it there first (ops shard drop-data) or choose another id with --shard", g.DestNode, g.Dest)
	}
	if _, _, err := d.change(ctx, []gizzard.Step{{Op: gizzard.OpSetMigration, Migration: &g}}); err != nil {
		return err
	}
	d.say(g.ID, "planned: %s", planString(g))
	return d.run(ctx, g.ID)
}

// finishedMove returns the newest finished move of source to node, when
// source is no longer in the map: a re-run of a migrate command whose
// first run finished (or whose ops process died just after).
func finishedMove(m *gizzard.Map, source, node string) (gizzard.Migration, bool) {
	var found gizzard.Migration
	if _, ok := m.Shards[source]; ok {
		return found, false
	}
	for _, g := range m.Migrations {
		if g.Kind == gizzard.MigrateMove && g.Source == source && g.State == gizzard.MigrationDone && (node == "" || g.DestNode == node) && g.Updated.After(found.Updated) {
			found = g
		}
	}
	return found, found.ID != ""
}

func planString(g gizzard.Migration) string {
	if g.Kind == gizzard.MigrateSplit {
		return fmt.Sprintf("split %s at %#016x: copy the upper part from %s on %s into %s on %s, under a new tree %s", g.Root, g.SplitAt, g.Source, g.SourceNode, g.Dest, g.DestNode, g.NewRoot)
	}
	return fmt.Sprintf("move %s (under %s) from %s to %s as %s", g.Source, g.Root, g.SourceNode, g.DestNode, g.Dest)
}

// updateMigration changes g's flags with a compare-and-swap on its state,
// retrying if a driver moves it meanwhile.
func (s *session) updateMigration(ctx context.Context, id string, edit func(*gizzard.Migration) error) (gizzard.Migration, error) {
	d := &driver{s: s, out: s.out, mu: &sync.Mutex{}}
	for {
		_, g, err := d.migration(ctx, id)
		if err != nil {
			return g, err
		}
		from := g.State
		if err := edit(&g); err != nil {
			return g, err
		}
		_, ok, err := d.change(ctx, []gizzard.Step{{Op: gizzard.OpSetMigration, Migration: &g, Expect: from}})
		if err != nil {
			return g, err
		}
		if ok {
			return g, nil
		}
	}
}

// cancelMigration rolls id back and drops what its destination copied.
func (s *session) cancelMigration(ctx context.Context, d *driver, id, note string) error {
	for {
		m, g, err := d.migration(ctx, id)
		if err != nil {
			return err
		}
		if g.State == gizzard.MigrationCancelled {
			return fmt.Errorf("migration %s is cancelled already", id)
		}
		if g.State == gizzard.MigrationCutover && g.Kind == gizzard.MigrateMove {
			// Nodes still on the cutover map read from the destination:
			// first give reads back to the source while both copies are
			// still written (paused, so that no driver cuts over again),
			// and drop the destination only once every node reads from
			// the source.
			if !g.Paused {
				if _, err := s.updateMigration(ctx, id, func(g *gizzard.Migration) error { g.Paused = true; return nil }); err != nil {
					return err
				}
				continue
			}
			v, ok, err := d.change(ctx, uncutSteps(m, g))
			if err != nil {
				return err
			}
			if ok {
				d.say(id, "cutover undone: %s serves reads again (map version %d); waiting for every node before dropping %s", g.Source, v, g.Dest)
				if err := d.awaitAll(ctx, v); err != nil {
					return err
				}
			}
			continue
		}
		steps, err := cancelSteps(m, g, note)
		if err != nil {
			return err
		}
		v, ok, err := d.change(ctx, steps)
		if err != nil {
			return err
		}
		if !ok {
			continue // a driver moved it on; roll back from the new state
		}
		d.say(id, "cancelled at %s: the original layout serves everything (map version %d)", g.State, v)
		if g.State == gizzard.MigrationPlanned {
			return nil
		}
		if err := d.awaitSite(ctx, v); err != nil {
			return err
		}
		if m, err = s.siteMap(ctx); err != nil {
			return err
		}
		if err := d.dropData(ctx, m, g.DestNode, g.Dest); err != nil {
			fmt.Fprintf(s.errOut, "note: the copy %s on %s is out of the map but its data stays: %v; drop it later with ops shard drop-data %s\n", g.Dest, g.DestNode, err, g.Dest)
			return nil
		}
		d.say(id, "dropped the partial copy %s on %s", g.Dest, g.DestNode)
		return nil
	}
}

func newMigrateCommand(o *options) *cobra.Command {
	var f migrateFlags
	var to, id string
	cmd := &cobra.Command{
		Use:   "migrate SHARD --to NODE",
		Short: "Move a physical shard to another node online",
		Long: `Move the physical shard SHARD (a replica under a replicating shard) to node
NODE while services keep writing and reading. The steps, each one change of
the map recorded in the audit log:

  planned   the migration is recorded
  copying   a new shard on NODE joins SHARD's parent behind a write_only
            wrapper: it gets every new write, and the existing data is copied
            into it from one snapshot of SHARD, in pages, at --rate, last
            writer wins (a copied record never overwrites a newer write)
  copied    the copy is complete
  verified  digests of SHARD and the copy match span by span (differences are
            listed by key; cutover is refused unless --force)
  cutover   the copy serves reads; SHARD still gets writes, so cancel can
            still go back
  cleanup   SHARD leaves the map; once every node routes by the new map its
            data is dropped
  done

Every write carries the map version it was routed by, and a node refuses a
write routed by a map older than the last change that moved its shard; the
router routes it again. So no write lands on a copy after it is retired.

If this command, the source node or the destination node dies, run the same
command again (or ops migrate resume ID): the migration continues from the
step it reached, and the copy from the last page the destination kept. If a
migration of SHARD is already under way, this command resumes it.`,
		Example: `  ops migrate default-003 --to node-2
  ops migrate default-003 --to node-2 --rate 50MB/s
  ops migrations
  ops migrate pause default-003-20261122-101500`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if _, err := parseRate(f.rate); err != nil {
				return err
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			d := s.driver(&f, true)
			for _, g := range m.ActiveMigrations() {
				if g.Source == args[0] || g.Dest == args[0] {
					if to != "" && g.DestNode != to {
						return fmt.Errorf("%s is already moving to %s in migration %s; cancel it first (ops migrate cancel %s)", args[0], g.DestNode, g.ID, g.ID)
					}
					d.say(g.ID, "resuming at %s", g.State)
					return d.run(ctx, g.ID)
				}
			}
			if g, ok := finishedMove(m, args[0], to); ok {
				d.say(g.ID, "%s already: %s", g.State, describeMigration(g))
				if g.State == gizzard.MigrationCancelled {
					return fmt.Errorf("migration %s of %s was cancelled; run the command again once the shard is back in the map", g.ID, args[0])
				}
				return nil
			}
			if to == "" {
				return errors.New("--to NODE is required for a new migration")
			}
			g, err := planMove(m, args[0], to, id, f.rate, f.force, time.Now())
			if err != nil {
				return err
			}
			return s.startMigration(ctx, d, g)
		}),
	}
	f.register(cmd, true)
	cmd.Flags().StringVar(&to, "to", "", "the node to move the shard to")
	cmd.Flags().StringVar(&id, "shard", "", `id of the new physical shard (default: SHARD with a generation suffix, "default-003.1")`)
	cmd.AddCommand(newMigratePauseCommand(o), newMigrateResumeCommand(o), newMigrateCancelCommand(o))
	return cmd
}

func newMigratePauseCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID",
		Short: "Pause a migration's copy",
		Long: `Mark migration ID paused: its driver stops copying (the destination keeps
what it copied, and its cursor) and waits. New writes still reach both
copies. Resume with ops migrate resume ID.`,
		Example: `  ops migrate pause default-003-20261122-101500`,
		Args:    cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			g, err := s.updateMigration(ctx, args[0], func(g *gizzard.Migration) error {
				if g.State.Final() {
					return fmt.Errorf("migration %s is %s", g.ID, g.State)
				}
				g.Paused = true
				return nil
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s paused at %s\n", g.ID, g.State)
			return nil
		}),
	}
}

func newMigrateResumeCommand(o *options) *cobra.Command {
	var f migrateFlags
	cmd := &cobra.Command{
		Use:   "resume ID",
		Short: "Resume a paused or interrupted migration, and drive it to its end",
		Long: `Clear migration ID's pause (and set --force or --rate if given), then drive
it from the step it reached to done, in this process. Use it after the ops
process that ran a migration died, too.`,
		Example: `  ops migrate resume default-003-20261122-101500
  ops migrate resume default-003-20261122-101500 --rate 50MB/s
  ops migrate resume default-003-20261122-101500 --force   # past a failed verification`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			rateSet := f.rate != ""
			if rateSet {
				if _, err := parseRate(f.rate); err != nil {
					return err
				}
			}
			g, err := s.updateMigration(ctx, args[0], func(g *gizzard.Migration) error {
				if g.State.Final() {
					return fmt.Errorf("migration %s is %s", g.ID, g.State)
				}
				g.Paused = false
				g.Force = g.Force || f.force
				if rateSet {
					g.Rate = f.rate
				}
				return nil
			})
			if err != nil {
				return err
			}
			d := s.driver(&f, true)
			d.say(g.ID, "resuming at %s", g.State)
			return d.run(ctx, g.ID)
		}),
	}
	f.register(cmd, false)
	cmd.Flags().StringVar(&f.rate, "rate", "", "change the copy throttle (e.g. 50MB/s, 0 for none)")
	return cmd
}

func newMigrateCancelCommand(o *options) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Roll a migration back",
		Long: `Roll migration ID back to the layout it started from, in one change, and
drop the destination's partial copy. A move can be cancelled at any step
before cleanup (after cutover its source still has every write); a split
only before cutover. A driver running the migration stops.`,
		Example: `  ops migrate cancel default-003-20261122-101500 --reason "node-2 is being drained"`,
		Args:    cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			d := &driver{s: s, out: s.out, mu: &sync.Mutex{}, poll: 200 * time.Millisecond}
			note := "cancelled by " + s.o.who
			if reason != "" {
				note += ": " + reason
			}
			return s.cancelMigration(ctx, d, args[0], note)
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded with the migration")
	return cmd
}

// migrationRow is a migration with its destination's copy progress.
type migrationRow struct {
	gizzard.Migration
	Copied      uint64 `json:"copied_records"`
	CopiedBytes uint64 `json:"copied_bytes"`
	CopyError   string `json:"copy_error,omitempty"`
}

func newMigrationsCommand(o *options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "migrations",
		Short: "List migrations and their progress",
		Long: `List the active migrations (with --all, also the finished ones the map
keeps): kind, source and destination, state, and the records and bytes the
destination has copied so far.`,
		Example: `  ops migrations
  ops migrations --all --json`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			var rows []migrationRow
			for _, id := range slices.Sorted(maps.Keys(m.Migrations)) {
				g := m.Migrations[id]
				if g.State.Final() && !all {
					continue
				}
				r := migrationRow{Migration: g}
				if g.State == gizzard.MigrationCopying || g.State == gizzard.MigrationCopied {
					if addr, err := nodeAddr(m, g.DestNode); err == nil {
						if a, err := s.admin(addr); err == nil {
							rctx, cancel := s.rpcCtx(ctx)
							p, err := a.CopyState(rctx, &pb.CopyStateRequest{MigrationId: g.ID})
							cancel()
							if err != nil {
								r.CopyError = describeStatus(err, s.o.timeout)
							} else {
								r.Copied, r.CopiedBytes = p.Records, p.Bytes
							}
						}
					}
				}
				rows = append(rows, r)
			}
			t := newTable("ID", "KIND", "SOURCE", "DEST", "STATE", "COPIED", "UPDATED", "NOTE")
			for _, r := range rows {
				state := string(r.State)
				if r.Paused {
					state += " (paused)"
				}
				copied := "-"
				if r.Copied > 0 || r.State == gizzard.MigrationCopying {
					copied = fmt.Sprintf("%d rec, %s", r.Copied, humanBytes(r.CopiedBytes))
				}
				if r.CopyError != "" {
					copied = "? " + r.CopyError
				}
				t.add(r.ID, string(r.Kind), r.Source+"@"+r.SourceNode, r.Dest+"@"+r.DestNode, state, copied,
					r.Updated.Local().Format("2006-01-02 15:04:05"), shorten(firstLine(r.Note), 60))
			}
			if !o.json && len(rows) == 0 {
				fmt.Fprintln(s.out, "no migrations (use --all to include finished ones)")
				return nil
			}
			return s.emit(rows, t)
		}),
	}
	cmd.Flags().BoolVar(&all, "all", false, "include finished migrations")
	return cmd
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func newSplitCommand(o *options) *cobra.Command {
	var f migrateFlags
	var node, dest, newRoot, at string
	cmd := &cobra.Command{
		Use:   "split ROOT --node NODE [--at HASH]",
		Short: "Split a shard tree's hash range into two trees online",
		Long: `Split the tree ROOT (a replicating root that forwardings point to): the
hashes from --at (default: the middle of its range) up to the end of its range
move to a new tree (--new-root, default ROOT with a generation suffix) over a
new physical shard on NODE. Like migrate: the new shard joins ROOT behind a
write_only wrapper, the moved ranges are copied from one snapshot at --rate,
verified by digests, then the forwardings of the moved ranges point at the
new tree in one change (cutover), and each side purges the records that are
no longer its own (cleanup). Cancel works until cutover.`,
		Example: `  ops split rep-003 --node node-2
  ops split rep-003 --node node-2 --at 0x7000000000000000`,
		Args: cobra.ExactArgs(1),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if _, err := parseRate(f.rate); err != nil {
				return err
			}
			var h uint64
			if at != "" {
				v, err := parseBase(at)
				if err != nil {
					return fmt.Errorf("--at: %w", err)
				}
				h = v
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			d := s.driver(&f, true)
			for _, g := range m.ActiveMigrations() {
				if g.Kind == gizzard.MigrateSplit && g.Root == args[0] {
					d.say(g.ID, "resuming at %s", g.State)
					return d.run(ctx, g.ID)
				}
			}
			g, err := planSplit(m, args[0], node, dest, newRoot, h, at != "", f.rate, f.force, time.Now())
			if err != nil {
				return err
			}
			return s.startMigration(ctx, d, g)
		}),
	}
	f.register(cmd, true)
	cmd.Flags().StringVar(&node, "node", "", "the node to hold the new tree's shard")
	cmd.Flags().StringVar(&at, "at", "", "the first hash of the new tree (decimal or 0x hex; default the middle)")
	cmd.Flags().StringVar(&dest, "shard", "", "id of the new physical shard")
	cmd.Flags().StringVar(&newRoot, "new-root", "", "id of the new tree's root")
	_ = cmd.MarkFlagRequired("node")
	return cmd
}

// rebalanceCheck is a precondition of a rebalance.
type rebalanceCheck struct {
	What string `json:"what"`
	OK   bool   `json:"ok"`
	Note string `json:"note,omitempty"`
}

func newRebalanceCommand(o *options) *cobra.Command {
	var f migrateFlags
	var dryRun bool
	var parallel, maxMoves int
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Even out shards and bytes per node, a few migrations at a time",
		Long: `Plan moves of physical shards that even out the number of shards per node,
then the bytes per node, never putting two replicas of one tree on one node.
Every precondition is checked first (every node reachable, ready and on the
same map version, the destinations free of stale shards). --dry-run prints the
plan and the checks and changes nothing; without it the moves run as
migrations (see ops migrate), --parallel at a time.`,
		Example: `  ops rebalance --dry-run
  ops rebalance --parallel 2 --rate 20MB/s`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			if _, err := parseRate(f.rate); err != nil {
				return err
			}
			if parallel < 1 {
				return fmt.Errorf("--parallel %d: must be at least 1", parallel)
			}
			m, err := s.siteMap(ctx)
			if err != nil {
				return err
			}
			var checks []rebalanceCheck
			probes := s.probeAll(ctx, m)
			var down []string
			agreed := true
			for _, p := range probes {
				if !p.Ready {
					down = append(down, fmt.Sprintf("%s (%s)", p.Node, dash(p.Error)))
				}
				if p.Reachable && p.MapVersion != m.Version {
					agreed = false
				}
			}
			checks = append(checks,
				rebalanceCheck{What: fmt.Sprintf("all %d nodes reachable and ready", len(probes)), OK: len(down) == 0, Note: strings.Join(down, ", ")},
				rebalanceCheck{What: fmt.Sprintf("every node routes by map version %d", m.Version), OK: agreed},
			)
			busy := map[string]bool{}
			active := m.ActiveMigrations()
			for _, g := range active {
				busy[g.Source], busy[g.Dest] = true, true
			}
			checks = append(checks, rebalanceCheck{What: "no migration under way", OK: len(active) == 0, Note: fmt.Sprintf("%d active; their shards stay", len(active))})
			sizesByNode, errs := s.shardSizes(ctx, m)
			sizes := map[string]uint64{}
			for id, sh := range m.Shards {
				if sh.Kind == gizzard.KindPhysical {
					sizes[id] = sizesByNode[sh.Node][id]
				}
			}
			checks = append(checks, rebalanceCheck{What: "shard sizes known", OK: len(errs) == 0, Note: fmt.Sprint(errs)})
			moves, notes := planRebalance(m, sizes, busy, maxMoves)
			stale := []string{}
			for _, mv := range moves {
				if have, ok := sizesByNode[mv.To]; ok {
					if _, taken := have[nextGeneration(mv.Shard, shardTaken(m))]; taken {
						stale = append(stale, fmt.Sprintf("%s holds %s", mv.To, nextGeneration(mv.Shard, shardTaken(m))))
					}
				}
			}
			checks = append(checks, rebalanceCheck{What: "destinations hold no stale shard of the planned names", OK: len(stale) == 0, Note: strings.Join(stale, ", ")})
			failed := 0
			for _, c := range checks {
				if !c.OK {
					failed++
				}
			}
			if o.json && dryRun {
				return s.printJSON(struct {
					Moves  []move           `json:"moves"`
					Checks []rebalanceCheck `json:"checks"`
					Notes  []string         `json:"notes"`
				}{moves, checks, notes})
			}
			for _, c := range checks {
				mark := "ok  "
				if !c.OK {
					mark = "FAIL"
				}
				line := fmt.Sprintf("%s %s", mark, c.What)
				if !c.OK && c.Note != "" {
					line += ": " + c.Note
				}
				fmt.Fprintln(s.out, line)
			}
			for _, n := range notes {
				fmt.Fprintln(s.out, "note:", n)
			}
			if len(moves) == 0 {
				fmt.Fprintln(s.out, "the site is balanced: nothing to move")
				return nil
			}
			fmt.Fprintf(s.out, "plan: %d moves\n", len(moves))
			for i, mv := range moves {
				fmt.Fprintf(s.out, "  %d. %s\n", i+1, mv)
			}
			if failed > 0 {
				return fmt.Errorf("%d precondition(s) failed; nothing changed", failed)
			}
			if dryRun {
				return nil
			}
			d := s.driver(&f, parallel == 1)
			for start := 0; start < len(moves); start += parallel {
				batch := moves[start:min(start+parallel, len(moves))]
				errs := make([]error, len(batch))
				var wg sync.WaitGroup
				for i, mv := range batch {
					cur, err := s.siteMap(ctx)
					if err == nil {
						var g gizzard.Migration
						if g, err = planMove(cur, mv.Shard, mv.To, "", f.rate, f.force, time.Now()); err == nil {
							if _, _, err = d.change(ctx, []gizzard.Step{{Op: gizzard.OpSetMigration, Migration: &g}}); err == nil {
								d.say(g.ID, "planned: %s", planString(g))
								wg.Go(func() { errs[i] = d.run(ctx, g.ID) })
								continue
							}
						}
					}
					// Let the moves already started finish before giving up.
					errs[i] = fmt.Errorf("move %d (%s): %w", start+i+1, mv, err)
					break
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					return err
				}
			}
			fmt.Fprintf(s.out, "rebalance done: %d moves\n", len(moves))
			return nil
		}),
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and its checks; change nothing")
	cmd.Flags().IntVar(&parallel, "parallel", 2, "migrations run at once")
	cmd.Flags().IntVar(&maxMoves, "max-moves", 0, "plan at most this many moves (0: as many as it takes)")
	return cmd
}
