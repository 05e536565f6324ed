package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/ops"
)

// The migrate workload: online shard migration (ops migrate) on an
// in-process 2-node site. It measures how fast an unthrottled migration
// copies a loaded shard, and what a throttled one does to the latency of
// the writes that keep arriving meanwhile.
const (
	migrateWorkload = "migrate"      // its name in --workloads
	migratePutName  = "migrate-put"  // the workload of its foreground rows
	migrateCopyName = "migrate-copy" // the workload of its copy rows
	migrateNodes    = 2              // nodes of its site
	migrateShards   = 2              // shard trees its site is seeded with
	migrateTree     = "rep-000"      // the tree whose physical shard moves
	migrateSource   = "default-000"  // that shard in a fresh site, on node-0
	migrateWho      = "aviary-bench" // the operator in the audit log
	unthrottled     = "0"            // ops migrate --rate for no throttle
	prefixMigrate   = 'm'            // the keys loaded into migrateTree
	// migrateLoadClients are the clients loading the shard; more only
	// queue on the key-stripe locks of the 1000-Put batches.
	migrateLoadClients = 4
	// maxLoadBatchBytes keeps a load batch under the node's default batch
	// limit (8 MiB of keys and values).
	maxLoadBatchBytes = 7 << 20
)

// The targets of online migration (issue 4).
const (
	copyTargetMBps = 50.0 // an unthrottled copy, in MB/s (10^6 bytes)
	p99TargetRatio = 2.0  // foreground p99 during a migration / idle
)

// Bounds and intervals of the migrate workload. The bounds only turn a hung
// migration into an error.
const (
	migrateOpsTimeout   = "60s"                  // ops --timeout: one digest of a big shard
	migrateStateTimeout = 10 * time.Second       // reading the map and the copy state after
	migrateWaitNote     = 500 * time.Millisecond // a wait after the window worth a line
	settleQuiet         = 2 * time.Second        // no compaction, no disk change: settled
	settleMax           = 90 * time.Second       // give up waiting for the store to settle
	settlePoll          = 250 * time.Millisecond // reading the nodes' metrics while settling
)

// migrationStates are the states of a move, in order.
var migrationStates = []gizzard.MigrationState{
	gizzard.MigrationPlanned, gizzard.MigrationCopying, gizzard.MigrationCopied, gizzard.MigrationVerified,
	gizzard.MigrationCutover, gizzard.MigrationCleanup, gizzard.MigrationDone,
}

// migration is one run of "ops migrate" and what the map and the
// destination recorded about it.
type migration struct {
	Rate         string // --rate as given
	Source, From string // the physical shard moved and its node
	Dest, To     string // the new physical shard and its node
	ID           string // the migration's id; "" if it was never recorded
	State        gizzard.MigrationState
	Start, End   time.Time // the ops command's run
	Err          error     // the ops command's
	// States holds the At of the change that set each state: the time the
	// driver proposed it (from the same clock as the rest of this process).
	States map[gizzard.MigrationState]time.Time
	// Records and Bytes are the destination's CopyProgress: the records
	// copied and their bytes as the copy counts them (shard.Mutation
	// StoredBytes: key, value, table name and a 15-byte header).
	Records, Bytes uint64
}

// copyPhase is the copy's time: from proposing the change that attaches
// the destination (state copying) to proposing the state copied, just after
// the destination acknowledged the last page. ok is false without both.
func (g *migration) copyPhase() (d time.Duration, ok bool) {
	a, okA := g.States[gizzard.MigrationCopying]
	z, okZ := g.States[gizzard.MigrationCopied]
	if !okA || !okZ {
		return 0, false
	}
	return z.Sub(a), true
}

// span is the migration's time from the change that planned it (or the
// command's start) to the change that marked it done (or the command's
// end).
func (g *migration) span() (from, to time.Time) {
	from, to = g.Start, g.End
	if t, ok := g.States[gizzard.MigrationPlanned]; ok {
		from = t
	}
	if t, ok := g.States[gizzard.MigrationDone]; ok {
		to = t
	}
	return from, to
}

// copySpan is the copy phase's interval, or the rest of the command's run
// if it never reached copied.
func (g *migration) copySpan() (from, to time.Time, ok bool) {
	from, ok = g.States[gizzard.MigrationCopying]
	if !ok {
		return time.Time{}, time.Time{}, false
	}
	to, ok = g.States[gizzard.MigrationCopied]
	if !ok {
		to = g.End
	}
	return from, to, true
}

// rates returns the copy's records/s and MB/s (10^6 bytes) over its copy
// phase, and the MB/s of the keys and values alone (keyBytes+valueBytes a
// record).
func (g *migration) rates(valueBytes int) (recPerSec, mbPerSec, kvMBPerSec float64, ok bool) {
	d, ok := g.copyPhase()
	if !ok || d <= 0 {
		return 0, 0, 0, false
	}
	s := d.Seconds()
	return float64(g.Records) / s, float64(g.Bytes) / 1e6 / s, float64(g.Records*uint64(keyLen+valueBytes)) / 1e6 / s, true
}

// rateLabel is how a --rate reads in the table.
func rateLabel(rate string) string {
	if l, err := parseCopyRate(rate); err == nil && l == 0 {
		return "unlimited"
	}
	return rate
}

// parseCopyRate checks a --rate for ops migrate as ops reads it ("16MB/s",
// "512KB/s", "5000rec/s", "0" or "none" for no limit), so that a bad one is
// refused before the load; ops remains the judge. It returns the rate in
// bytes or records per second, 0 for none.
func parseCopyRate(s string) (float64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "0" || t == "none" || t == "unlimited" {
		return 0, nil
	}
	for _, suffix := range []string{"rec/s", "records/s", "gb/s", "mb/s", "kb/s", "b/s"} {
		num, ok := strings.CutSuffix(t, suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			break
		}
		return v, nil
	}
	return 0, fmt.Errorf("%q: want a positive number with MB/s, KB/s, GB/s, B/s or rec/s (e.g. 16MB/s, 5000rec/s), or 0 for no limit", s)
}

// linePrinter passes what ops prints to the bench's output, a whole line
// at a time, each behind a prefix.
type linePrinter struct {
	b      *bench
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *linePrinter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(w.buf[:i]), "\r")
		w.buf = w.buf[i+1:]
		w.b.printf("%s%s\n", w.prefix, line)
	}
}

// flush prints a last line that did not end.
func (w *linePrinter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.b.printf("%s%s\n", w.prefix, w.buf)
		w.buf = nil
	}
}

// nodeIndex returns the index in the site of node id ("node-<i>").
func nodeIndex(s *site, id string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(id, "node-"))
	if err != nil || !strings.HasPrefix(id, "node-") || i < 0 || i >= len(s.nodes) {
		return 0, fmt.Errorf("node %q is not one of the site's %d nodes", id, len(s.nodes))
	}
	return i, nil
}

// treeLeaf returns the physical shard directly under tree (the tree's only
// replica between migrations).
func treeLeaf(m *gizzard.Map, tree string) (gizzard.Shard, error) {
	root, ok := m.Shards[tree]
	if !ok {
		return gizzard.Shard{}, fmt.Errorf("the map has no shard tree %q", tree)
	}
	var leaves []gizzard.Shard
	for _, l := range root.Children {
		if sh := m.Shards[l.Child]; sh.Kind == gizzard.KindPhysical {
			leaves = append(leaves, sh)
		}
	}
	if len(leaves) != 1 || len(root.Children) != 1 {
		return gizzard.Shard{}, fmt.Errorf("tree %q has %d children, %d of them physical: want one physical shard between migrations", tree, len(root.Children), len(leaves))
	}
	return leaves[0], nil
}

// auditState matches the set_migration step of an audit entry and captures
// the state it set.
func auditState(id string) *regexp.Regexp {
	return regexp.MustCompile(`set_migration "` + regexp.QuoteMeta(id) + `" \S+ "[^"]*" -> "[^"]*" on "[^"]*": (\w+)`)
}

// runOpsMigrate runs "ops migrate source --to to --rate rate" in this
// process against node-0, with its output passed through, then reads what
// the map's audit log and the destination recorded about the migration.
func (b *bench) runOpsMigrate(ctx context.Context, s *site, source, to, rate string) *migration {
	g := &migration{Rate: rate, Source: source, To: to, States: map[gizzard.MigrationState]time.Time{}}
	w := &linePrinter{b: b, prefix: "#   ops: "}
	cmd := ops.NewCommand()
	cmd.SetArgs([]string{"--addr", s.nodes[0].GRPCAddr(), "--who", migrateWho, "--timeout", migrateOpsTimeout,
		"migrate", source, "--to", to, "--rate", rate})
	cmd.SetOut(w)
	cmd.SetErr(w)
	g.Start = time.Now()
	g.Err = cmd.ExecuteContext(ctx)
	g.End = time.Now()
	w.flush()
	if ctx.Err() != nil {
		return g
	}

	rctx, cancel := context.WithTimeout(ctx, migrateStateTimeout)
	defer cancel()
	m, err := s.getMap(rctx, 0)
	if err != nil {
		g.Err = errors.Join(g.Err, err)
		return g
	}
	var rec gizzard.Migration
	for _, mg := range m.Migrations {
		if mg.Source == source && mg.DestNode == to && (g.ID == "" || mg.Created.After(rec.Created)) {
			g.ID, rec = mg.ID, mg
		}
	}
	if g.ID == "" {
		g.Err = errors.Join(g.Err, fmt.Errorf("the map records no migration of %s to %s", source, to))
		return g
	}
	g.Dest, g.From, g.State = rec.Dest, rec.SourceNode, rec.State
	re := auditState(g.ID)
	for _, a := range m.Audit {
		if sm := re.FindStringSubmatch(a.What); sm != nil {
			g.States[gizzard.MigrationState(sm[1])] = a.At
		}
	}
	i, err := nodeIndex(s, to)
	if err != nil {
		g.Err = errors.Join(g.Err, err)
		return g
	}
	p, err := s.admin[i].CopyState(rctx, &pb.CopyStateRequest{MigrationId: g.ID})
	if err != nil {
		g.Err = errors.Join(g.Err, fmt.Errorf("copy state of %s on %s: %w", g.ID, to, err))
		return g
	}
	g.Records, g.Bytes = p.Records, p.Bytes
	if g.Err == nil && g.State != gizzard.MigrationDone {
		g.Err = fmt.Errorf("migration %s ended in state %s", g.ID, g.State)
	}
	return g
}

// migrateFailed reports a failed step of the migrate workload as a row with
// one error.
func (b *bench) migrateFailed(workload, target string, err error) {
	b.report(&result{Workload: workload, Target: target, Concurrency: 1, Nodes: migrateNodes,
		Errors: 1, Hist: NewHistogram(), ErrSamples: map[string]uint64{err.Error(): 1}})
}

// jsonCopy is a migration's copy as a JSON line.
type jsonCopy struct {
	Type             string             `json:"type"` // "copy"
	Workload         string             `json:"workload"`
	Rate             string             `json:"rate"`
	UnderLoad        bool               `json:"under_load"` // foreground writers ran meanwhile
	ID               string             `json:"id"`
	Source           string             `json:"source"`
	Dest             string             `json:"dest"`
	Records          uint64             `json:"records"`
	Bytes            uint64             `json:"bytes"`           // as the copy counts them
	KeyValueBytes    uint64             `json:"key_value_bytes"` // records x (key + value)
	CopySec          float64            `json:"copy_sec"`
	MigrationSec     float64            `json:"migration_sec"` // the ops command's run
	RecordsPerSec    float64            `json:"records_per_sec"`
	MBPerSec         float64            `json:"mb_per_sec"`
	KeyValueMBPerSec float64            `json:"key_value_mb_per_sec"`
	PhaseSec         map[string]float64 `json:"phase_sec"` // "copying": from copying to the next state
	State            string             `json:"state"`
	Error            string             `json:"error,omitempty"`
}

// jsonMigrateWindow is a foreground window during a migration as a JSON
// line: the p99 ratio and how much of the window the migration covered.
type jsonMigrateWindow struct {
	Type                string   `json:"type"` // "migrate_window"
	Rate                string   `json:"rate"`
	P99Ratio            *float64 `json:"p99_ratio"` // migrating / idle
	WindowSec           float64  `json:"window_sec"`
	CopyOverlapSec      float64  `json:"copy_overlap_sec"`
	MigrationOverlapSec float64  `json:"migration_overlap_sec"`
	FinishedEarly       bool     `json:"finished_early"`      // done before the window ended
	OtherCPUIdle        float64  `json:"other_cpu_idle"`      // cores used by other processes, idle window
	OtherCPUMigrating   float64  `json:"other_cpu_migrating"` // and the migrating one
}

// jsonTargets is the verdict on the targets as a JSON line.
type jsonTargets struct {
	Type         string             `json:"type"` // "targets"
	CopyMBPerSec *float64           `json:"copy_mb_per_sec"`
	CopyMet      bool               `json:"copy_met"`
	P99Ratios    map[string]float64 `json:"p99_ratios"` // by rate
	P99Met       map[string]bool    `json:"p99_met"`
}

// copyRowFormat is a row of the copy table.
const copyRowFormat = "%-*s %-9s %9v %9v %9v %9v %10v %8v %8v\n"

// copyHeader prints the copy table's header.
func (b *bench) copyHeader() {
	b.printf(copyRowFormat, b.wcol, "workload", "rate", "records", "MB", "copy", "migration", "rec/s", "MB/s", "kv MB/s")
}

// reportCopy prints a migration's copy row and its phases, and keeps it for
// --json. It counts a failed migration as an error.
func (b *bench) reportCopy(g *migration, underLoad bool) {
	vb := b.cfg.MigrateValueBytes
	rec := jsonCopy{Type: "copy", Workload: migrateCopyName, Rate: g.Rate, UnderLoad: underLoad, ID: g.ID,
		Source: g.From + "/" + g.Source, Dest: g.To + "/" + g.Dest, Records: g.Records, Bytes: g.Bytes,
		KeyValueBytes: g.Records * uint64(keyLen+vb), MigrationSec: g.End.Sub(g.Start).Seconds(),
		PhaseSec: map[string]float64{}, State: string(g.State)}
	copyText, recs, mbs, kvs := "-", "-", "-", "-"
	if d, ok := g.copyPhase(); ok {
		rec.CopySec = d.Seconds()
		copyText = fmtDur(int64(d))
	}
	if r, mb, kv, ok := g.rates(vb); ok {
		rec.RecordsPerSec, rec.MBPerSec, rec.KeyValueMBPerSec = r, mb, kv
		recs, mbs, kvs = fmt.Sprintf("%.0f", r), fmt.Sprintf("%.1f", mb), fmt.Sprintf("%.1f", kv)
	}
	b.printf(copyRowFormat, b.wcol, migrateCopyName, rateLabel(g.Rate), g.Records, fmt.Sprintf("%.1f", float64(g.Bytes)/1e6),
		copyText, fmtDur(int64(g.End.Sub(g.Start))), recs, mbs, kvs)
	var phases []string
	for i, st := range migrationStates[:len(migrationStates)-1] {
		next := migrationStates[i+1]
		a, okA := g.States[st]
		z, okZ := g.States[next]
		if okA && okZ {
			rec.PhaseSec[string(st)] = z.Sub(a).Seconds()
			phases = append(phases, fmt.Sprintf("%s %s", st, fmtDur(int64(z.Sub(a)))))
		}
	}
	if len(phases) > 0 {
		b.printf("#   %s %s: %s moved %s/%s to %s/%s; time in each state (between the changes that set them): %s\n",
			migrateCopyName, rateLabel(g.Rate), g.ID, g.From, g.Source, g.To, g.Dest, strings.Join(phases, ", "))
	}
	if g.Err != nil {
		rec.Error = g.Err.Error()
		b.printf("#   %s %s error: %v\n", migrateCopyName, rateLabel(g.Rate), g.Err)
		b.errors++
	}
	b.records = append(b.records, rec)
}

// overlap is the length of the intersection of [a0, a1] and [b0, b1].
func overlap(a0, a1, b0, b1 time.Time) time.Duration {
	lo, hi := a0, a1
	if b0.After(lo) {
		lo = b0
	}
	if b1.Before(hi) {
		hi = b1
	}
	if !hi.After(lo) {
		return 0
	}
	return hi.Sub(lo)
}

// migrateOutcome is a measured throttled migration, for the summary.
type migrateOutcome struct {
	rate     string
	ratio    float64 // p99 migrating / idle; 0 if unknown
	window   time.Duration
	copyCov  time.Duration // of the window, spent copying
	migCov   time.Duration // of the window, with the migration under way
	finished bool          // done before the window ended
}

// runMigrate runs the migrate workload on a fresh site: it loads the
// shard, times an unthrottled move of it, then for each --migrate-rates
// value measures foreground writes idle and during a move at that rate,
// and prints the verdict on the targets. It returns the error of shutting
// the site down; failures are reported and counted as results are.
func (b *bench) runMigrate(ctx context.Context) (shutdownErr error) {
	c := &b.cfg
	dir := filepath.Join(b.root, "site-migrate")
	start := time.Now()
	s, err := startSite(ctx, dir, migrateNodes, migrateShards)
	if err != nil {
		if ctx.Err() == nil {
			b.migrateFailed(migrateCopyName, "setup", err)
		}
		return os.RemoveAll(dir)
	}
	defer func() {
		t := time.Now()
		shutdownErr = errors.Join(s.stop(), os.RemoveAll(dir))
		b.printf("# migrate: site shut down in %s\n", time.Since(t).Round(time.Millisecond))
		if shutdownErr != nil {
			b.printf("# migrate: shutting the site down: %v\n", shutdownErr)
			shutdownErr = fmt.Errorf("migrate: %w", shutdownErr)
		}
	}()
	m, err := s.getMap(ctx, 0)
	if err == nil {
		err = s.waitVersion(ctx, m.Version)
	}
	var leaf gizzard.Shard
	if err == nil {
		leaf, err = treeLeaf(m, migrateTree)
	}
	if err == nil && (leaf.ID != migrateSource || leaf.Node != "node-0") {
		err = fmt.Errorf("tree %s is over %s on %s, want %s on node-0 in a fresh site", migrateTree, leaf.ID, leaf.Node, migrateSource)
	}
	if err != nil {
		b.migrateFailed(migrateCopyName, "setup", err)
		return nil
	}
	b.printf("# migrate: %d-node site up in %s: %d shard trees over every table, each over one physical shard on node-0, map version %d, data in %s\n",
		migrateNodes, time.Since(start).Round(time.Millisecond), migrateShards, m.Version, dir)

	// 1. Load the shard through node-0's router.
	if err := b.migrateLoad(ctx, s, m); err != nil {
		if ctx.Err() == nil {
			b.migrateFailed(migrateCopyName, "load", err)
		}
		return nil
	}

	// 2. The unthrottled copy, with no other load.
	b.settle(ctx, s, "the unthrottled copy")
	b.printf("# %s: ops migrate %s --to node-1 --rate %s, with no other load\n", migrateCopyName, migrateSource, unthrottled)
	cpu0 := cpuNow()
	g := b.runOpsMigrate(ctx, s, migrateSource, "node-1", unthrottled)
	if ctx.Err() != nil {
		return nil
	}
	_, _, _, cpuText := cpuUse(cpu0, cpuNow())
	b.copyHeader()
	b.reportCopy(g, false)
	b.printf("#   %s unlimited: CPU over the whole migration: %s\n", migrateCopyName, cpuText)
	if g.Records != uint64(c.MigrateRecords) {
		b.printf("#   %s: copied %d records, loaded %d\n", migrateCopyName, g.Records, c.MigrateRecords)
	}
	var copyMBps *float64
	if _, mb, _, ok := g.rates(c.MigrateValueBytes); ok && g.Err == nil {
		copyMBps = &mb
	}
	if g.Err != nil {
		return nil
	}
	b.drainQuiet(ctx, s)

	// 3. Foreground writes, idle and during a migration, per rate.
	var clients []pb.DataClient
	for range c.Conns {
		for _, n := range s.nodes {
			cc, err := dial(n.GRPCAddr())
			if err != nil {
				b.migrateFailed(migratePutName, "setup", err)
				return nil
			}
			defer cc.Close()
			clients = append(clients, pb.NewDataClient(cc))
		}
	}
	client := func(w int) pb.DataClient { return clients[w%len(clients)] }
	var outcomes []migrateOutcome
	for _, rate := range c.MigrateRates {
		if ctx.Err() != nil {
			break
		}
		o, ok := b.migrateWindow(ctx, s, client, rate)
		if !ok {
			break
		}
		outcomes = append(outcomes, o)
	}
	if ctx.Err() == nil {
		b.migrateTargets(copyMBps, outcomes)
	}
	return nil
}

// migrateLoad loads --migrate-records records into migrateTree with Write
// batches through node-0's router, each of Puts of random keys whose hash
// the map forwards to migrateTree.
func (b *bench) migrateLoad(ctx context.Context, s *site, m *gizzard.Map) error {
	vb := b.cfg.MigrateValueBytes
	chunk := min(preloadBatch, max(1, maxLoadBatchBytes/(keyLen+vb)))
	c := pb.NewDataClient(s.conns[0])
	fill := func(ctx context.Context, _, lo, hi int) error {
		rng := newRand()
		req := &pb.WriteRequest{Mutations: make([]*pb.Mutation, 0, hi-lo)}
		for len(req.Mutations) < hi-lo {
			key := appendKey(make([]byte, 0, keyLen), prefixMigrate, rng.Uint64())
			f, err := m.Lookup(contentTable, gizzard.Hash(key))
			if err != nil {
				return err
			}
			if f.Root != migrateTree {
				continue
			}
			v := make([]byte, vb)
			fillRandom(rng, v)
			req.Mutations = append(req.Mutations, &pb.Mutation{Table: contentTable,
				Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: key, Value: v}}})
		}
		resp, err := c.Write(ctx, req)
		if err != nil {
			return err
		}
		if len(resp.Results) != len(req.Mutations) {
			return fmt.Errorf("write: %d results for %d mutations", len(resp.Results), len(req.Mutations))
		}
		if sh := resp.Results[0].Shard; sh != migrateTree {
			return fmt.Errorf("write: routed to %q, want %q", sh, migrateTree)
		}
		return nil
	}
	n := b.cfg.MigrateRecords
	b.printf("# migrate: loading %d records (%d-byte keys, %d-byte random values: %.1f MB of keys and values) into %s (%s on node-0) "+
		"through node-0's router: Writes of %d Puts whose keys hash into %s's range of table %s (routed, journaled, durable)\n",
		n, keyLen, vb, float64(n*(keyLen+vb))/1e6, migrateTree, migrateSource, chunk, migrateTree, contentTable)
	return b.preload(ctx, "migrate (load)", n, chunk, migrateLoadClients, fill)
}

// storeActivity reads a node's store metrics: compactions completed and
// disk bytes (which count in-progress compaction outputs and the WAL).
func storeActivity(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "aviary_shard_compactions_total ") || strings.HasPrefix(line, "aviary_shard_disk_bytes ") {
			out = append(out, line)
		}
	}
	if len(out) != 2 {
		return "", fmt.Errorf("metrics of %s: no compaction or disk figures", addr)
	}
	return strings.Join(out, "; "), nil
}

// settle waits until no node of the site has completed a compaction or
// changed its disk usage for settleQuiet (at most settleMax), and says how
// long that took if it was noticeable. Pebble compacts in the background
// what a load or a dropped shard left behind; a window measured meanwhile
// would measure that too.
func (b *bench) settle(ctx context.Context, s *site, before string) {
	start := time.Now()
	last, quietSince := "", start
	for ctx.Err() == nil {
		var cur []string
		for _, n := range s.nodes {
			a, err := storeActivity(ctx, n.HTTPAddr())
			if err != nil {
				if ctx.Err() == nil {
					b.printf("# migrate: not waiting for compactions before %s: %v\n", before, err)
				}
				return
			}
			cur = append(cur, a)
		}
		now := time.Now()
		if c := strings.Join(cur, " | "); c != last {
			last, quietSince = c, now
		}
		if now.Sub(quietSince) >= settleQuiet {
			if d := quietSince.Sub(start); d >= migrateWaitNote {
				b.printf("# migrate: waited %s for compactions to finish before %s\n", d.Round(100*time.Millisecond), before)
			}
			return
		}
		if now.Sub(start) >= settleMax {
			b.printf("# migrate: compactions still running after %s; measuring %s anyway\n", settleMax, before)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(settlePoll):
		}
	}
}

// cpuSample is the CPU time used so far by this process and by the whole
// machine.
type cpuSample struct {
	at   time.Time
	self time.Duration // this process, user and system
	// busy, steal and total are the machine's jiffies from /proc/stat:
	// busy (user, nice, system, irq, softirq), stolen by the hypervisor,
	// and all of them with idle and iowait; 0 if unreadable.
	busy, steal, total uint64
}

func cpuNow() cpuSample {
	c := cpuSample{at: time.Now(), self: selfCPU()}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return c
	}
	v := make([]uint64, 8) // user nice system idle iowait irq softirq steal
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	c.busy = v[0] + v[1] + v[2] + v[5] + v[6]
	c.steal = v[7]
	c.total = c.busy + v[3] + v[4] + c.steal
	return c
}

// cpuUse describes the CPU used from a to b, in cores: by this process, by
// everything else on the machine, and stolen from the VM.
func cpuUse(a, b cpuSample) (self, others, steal float64, text string) {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return 0, 0, 0, ""
	}
	self = (b.self - a.self).Seconds() / wall
	text = fmt.Sprintf("this process %.2f cores", self)
	if b.total > a.total {
		dt := float64(b.total - a.total)
		cpus := float64(runtime.NumCPU())
		busy := float64(b.busy-a.busy) / dt * cpus
		steal = float64(b.steal-a.steal) / dt * cpus
		others = max(busy-self, 0)
		text += fmt.Sprintf(", other processes %.2f, stolen %.2f, of %d", others, steal, int(cpus))
	}
	return self, others, steal, text
}

// drainQuiet drains the site's replication backlog, saying so only if it
// took long or failed.
func (b *bench) drainQuiet(ctx context.Context, s *site) {
	d, err := s.drain(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		b.printf("# migrate: %v\n", err)
	case d >= 50*time.Millisecond:
		b.printf("# migrate: replication backlog drained in %s\n", d.Round(time.Millisecond))
	}
}

// migrateWindow measures foreground writes for --duration with the site
// idle, then again with a move of migrateTree's shard to the other node at
// rate started as the measurement starts (after the warmup), and prints both rows,
// the migration's copy row, the p99 ratio and how much of the window the
// migration covered. ok is false if it was interrupted or failed before
// measuring.
func (b *bench) migrateWindow(ctx context.Context, s *site, client func(int) pb.DataClient, rate string) (o migrateOutcome, ok bool) {
	c := &b.cfg
	label := rateLabel(rate)
	o.rate = label
	newOp := putOps(unary(client), c.MigrateValueBytes, pb.Consistency_CONSISTENCY_DEFAULT, 0)
	b.settle(ctx, s, "the idle window")
	b.printf("# %s idle: the baseline for %s; load average %s\n", migratePutName, label, loadAvg())
	cpu0 := cpuNow()
	idle := runLoop(ctx, migratePutName, "idle", c.MigrateWriters, 1, c.Warmup, c.Duration, newOp)
	if idle == nil {
		return o, false
	}
	idle.Nodes = migrateNodes
	b.report(idle)
	_, idleOthers, _, cpuText := cpuUse(cpu0, cpuNow())
	b.printf("#   %s idle: CPU over the warmup and window: %s\n", migratePutName, cpuText)
	if ctx.Err() != nil {
		return o, false
	}
	b.drainQuiet(ctx, s)
	b.settle(ctx, s, "the migration")

	m, err := s.getMap(ctx, 0)
	var leaf gizzard.Shard
	if err == nil {
		leaf, err = treeLeaf(m, migrateTree)
	}
	if err != nil {
		b.migrateFailed(migratePutName, label, err)
		return o, false
	}
	to := "node-0"
	if leaf.Node == "node-0" {
		to = "node-1"
	}
	b.printf("# %s %s: the writers start; after the %s warmup, as the window starts, ops migrate %s --to %s --rate %s; load average %s\n",
		migratePutName, label, c.Warmup, leaf.ID, to, rate, loadAvg())
	cpu0 = cpuNow()
	loopStart := time.Now()
	loopDone := make(chan *result, 1)
	go func() {
		loopDone <- runLoop(ctx, migratePutName, label, c.MigrateWriters, 1, c.Warmup, c.Duration, newOp)
	}()
	var g *migration
	finished := make(chan struct{})
	select {
	case <-ctx.Done():
		close(finished)
	case <-time.After(time.Until(loopStart.Add(c.Warmup))):
		go func() {
			defer close(finished)
			g = b.runOpsMigrate(ctx, s, leaf.ID, to, rate)
		}()
	}
	res := <-loopDone
	cpu1 := cpuNow()
	select {
	case <-finished:
	default:
		t := time.Now()
		<-finished
		if d := time.Since(t); d >= migrateWaitNote && ctx.Err() == nil {
			b.printf("#   %s %s: the migration finished %s after the window\n", migratePutName, label, d.Round(time.Millisecond))
		}
	}
	if res == nil || g == nil || ctx.Err() != nil {
		return o, false
	}
	res.Nodes = migrateNodes
	b.report(res)
	_, migOthers, _, cpuText := cpuUse(cpu0, cpu1)
	b.printf("#   %s %s: CPU over the warmup and window: %s\n", migratePutName, label, cpuText)
	b.copyHeader()
	b.reportCopy(g, true)

	// The window and what of it the migration covered.
	w0 := loopStart.Add(c.Warmup)
	w1 := w0.Add(res.Elapsed)
	o.window = res.Elapsed
	m0, m1 := g.span()
	o.migCov = overlap(w0, w1, m0, m1)
	if c0, c1, ok := g.copySpan(); ok {
		o.copyCov = overlap(w0, w1, c0, c1)
	}
	o.finished = m1.Before(w1)
	pct := func(d time.Duration) string { return fmt.Sprintf("%.0f%%", 100*d.Seconds()/o.window.Seconds()) }
	end := "and was still under way when the window ended"
	if o.finished {
		end = fmt.Sprintf("and finished %s before the window ended", w1.Sub(m1).Round(time.Millisecond))
	}
	b.printf("#   %s %s: the migration (planned to done) covered %s of the %s window (%s): it started %s into it %s; its copy phase covered %s (%s)\n",
		migratePutName, label, o.migCov.Round(time.Millisecond), o.window.Round(time.Millisecond), pct(o.migCov),
		max(m0.Sub(w0), 0).Round(time.Millisecond), end, o.copyCov.Round(time.Millisecond), pct(o.copyCov))

	rec := jsonMigrateWindow{Type: "migrate_window", Rate: rate, WindowSec: o.window.Seconds(),
		CopyOverlapSec: o.copyCov.Seconds(), MigrationOverlapSec: o.migCov.Seconds(), FinishedEarly: o.finished,
		OtherCPUIdle: idleOthers, OtherCPUMigrating: migOthers}
	text := "-"
	if ip, mp := idle.Hist.Quantile(0.99), res.Hist.Quantile(0.99); idle.Hist.Count() > 0 && res.Hist.Count() > 0 && ip > 0 {
		o.ratio = float64(mp) / float64(ip)
		rec.P99Ratio = &o.ratio
		text = fmt.Sprintf("%.2f", o.ratio)
		if idle.OpsPerSec() > 0 {
			text += fmt.Sprintf(" (p50 %.2f, ops/s %.2f)", float64(res.Hist.Quantile(0.5))/float64(max(idle.Hist.Quantile(0.5), 1)),
				res.OpsPerSec()/idle.OpsPerSec())
		}
	}
	b.printf("%-*s %-7s p99 %s/idle = %s\n", b.wcol, migratePutName, "ratio", label, text)
	b.records = append(b.records, rec)
	return o, true
}

// migrateTargets prints the verdict on the targets in one line.
func (b *bench) migrateTargets(copyMBps *float64, outcomes []migrateOutcome) {
	rec := jsonTargets{Type: "targets", CopyMBPerSec: copyMBps, P99Ratios: map[string]float64{}, P99Met: map[string]bool{}}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	copyText := "unknown (the copy failed)"
	if copyMBps != nil {
		rec.CopyMet = *copyMBps >= copyTargetMBps
		copyText = fmt.Sprintf("%.1f MB/s, %s", *copyMBps, met(rec.CopyMet))
	}
	var p99 []string
	for _, o := range outcomes {
		if o.ratio <= 0 {
			p99 = append(p99, o.rate+" unknown")
			continue
		}
		ok := o.ratio <= p99TargetRatio
		rec.P99Ratios[o.rate], rec.P99Met[o.rate] = o.ratio, ok
		t := fmt.Sprintf("%s %.2fx, %s", o.rate, o.ratio, met(ok))
		t += fmt.Sprintf(" (the migration covered %.0f%% of the window", 100*o.migCov.Seconds()/o.window.Seconds())
		if o.finished {
			t += ", finishing before its end"
		}
		t += ")"
		p99 = append(p99, t)
	}
	if len(p99) == 0 {
		p99 = []string{"not measured"}
	}
	b.printf("# targets: unthrottled copy >= %.0f MB/s: %s; foreground p99 during a migration <= %.0fx idle: %s\n",
		copyTargetMBps, copyText, p99TargetRatio, strings.Join(p99, "; "))
	b.records = append(b.records, rec)
}
