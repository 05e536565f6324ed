package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/api/client"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/spf13/cobra"
)

// drillFlags are the flags of ops drill failover and failback.
type drillFlags struct {
	dir        string
	from, to   string
	unplanned  bool
	dryRun     bool
	rate       float64
	warmup     time.Duration
	after      time.Duration
	maxLag     time.Duration
	rtoTarget  time.Duration
	wait       time.Duration
	sampleTick time.Duration
}

func newDrillCommand(o *options) *cobra.Command {
	f := &drillFlags{dir: defaultDevDir, rate: 50, warmup: 2 * time.Second, after: 2 * time.Second,
		maxLag: 5 * time.Second, rtoTarget: 5 * time.Second, wait: 2 * time.Minute, sampleTick: 250 * time.Millisecond}
	cmd := &cobra.Command{
		Use:   "drill",
		Short: "Fail a site of the local multi-site deployment over to another and back, with a report",
		Long: `A DR drill fails a whole site (region) over to another and back, and proves
with figures that nothing acknowledged was lost. It runs against the local
deployment of ops dev up --sites N (--dir), whose processes it can kill and
start again.

While it runs, a verifying workload writes numbered records to every shard of
table statuses at every site, from a client per site that prefers its own
site and fails over to the others (the Go client's site preference list).
Every acknowledged write is recorded, so RPO is counted in records, not
guessed from lag.

  failover --from A --to B       planned: checks; A draining (it holds its
                                 clients' writes); waits until B has applied
                                 everything A acknowledged (RPO 0); A fenced
                                 in every site's map: its clients move to B
  failover ... --unplanned       A's processes are killed (SIGKILL) instead;
                                 the writes A acknowledged that B lacks at the
                                 cut are counted and listed (lost-writes.jsonl)
  failback --to A                A's dead processes started again (they take
                                 no client's write); A recovering until its
                                 relays have caught up from the other sites
                                 and they have A's writes; A verified against
                                 B (ops verify); then active again

RTO is the time from the start of the failover until a write of A's clients
is acknowledged at B. The report (DIR/drills/ID/report.json and report.html:
the timeline of events, RTO and RPO against their targets, lag over time,
digests before and after, the verdict) is also recorded in the audit log of
every site that runs. A drill that stopped half-way (an error, Ctrl-C) is
finished by failback, from whatever stage it reached; a new failover waits
until the last drill has failed back.`,
		Example: `  ops dev up --sites 3
  ops drill failover --from site-a --to site-b --dry-run
  ops drill failover --from site-a --to site-b
  ops drill failback --to site-a
  ops drill failover --from site-a --to site-b --unplanned
  ops drill failback --to site-a`,
		Args: cobra.NoArgs,
		RunE: groupRunE,
	}
	common := func(c *cobra.Command) {
		fl := c.Flags()
		fl.StringVar(&f.dir, "dir", f.dir, "directory of the dev deployment (ops dev up --sites N --dir)")
		fl.Float64Var(&f.rate, "rate", f.rate, "verifying writes per second from each site's client")
		fl.DurationVar(&f.after, "after", f.after, "how long the workload goes on once the drill step is done")
		fl.DurationVar(&f.wait, "wait", f.wait, "bound on each wait (drain, catch-up, convergence)")
		fl.DurationVar(&f.rtoTarget, "rto-target", f.rtoTarget, "the RTO the report measures against")
	}
	failover := &cobra.Command{
		Use:   "failover --from A --to B [--unplanned] [--dry-run]",
		Short: "Fail site A over to site B (planned, or --unplanned: A's processes are killed)",
		Long: `Fail site A over to site B. First the checks: every node and relay of every
site answers, A and B are active, the lag of the path A → B is under
--max-lag, B has room (free disk on its node 0's file system for twice A's
data). --dry-run prints the plan and the
checks and stops; a failed check stops the drill.`,
		Example: `  ops drill failover --from site-a --to site-b --dry-run
  ops drill failover --from site-a --to site-b --unplanned`,
		Args: cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			s.useDevDir(f.dir)
			return s.drillFailover(ctx, *f)
		}),
	}
	common(failover)
	ff := failover.Flags()
	ff.StringVar(&f.from, "from", "", "the site to fail over (its clients move away)")
	ff.StringVar(&f.to, "to", "", "the site that takes A's clients")
	ff.BoolVar(&f.unplanned, "unplanned", false, "kill A's processes (SIGKILL) instead of fencing it")
	ff.BoolVar(&f.dryRun, "dry-run", false, "print the plan and the checks, change nothing")
	ff.DurationVar(&f.warmup, "warmup", f.warmup, "how long the workload runs before the failover starts")
	ff.DurationVar(&f.maxLag, "max-lag", f.maxLag, "the largest lag of the path A → B the checks accept")
	_ = failover.MarkFlagRequired("from")
	_ = failover.MarkFlagRequired("to")
	failback := &cobra.Command{
		Use:   "failback --to A",
		Short: "Bring site A back after a failover drill: recover, verify, unfence",
		Long: `Finish the drill that failed site A over: start A's processes again if the
drill killed them, hold A recovering until its relays have caught up and the
other sites hold A's writes, verify A against the site it failed over to,
then make A active again and wait until A's clients write at A. The report
gets its verdict: pass, pass with conditions, or fail.`,
		Example: `  ops drill failback --to site-a`,
		Args:    cobra.NoArgs,
		RunE: o.runner(func(ctx context.Context, s *session, _ []string) error {
			s.useDevDir(f.dir)
			return s.drillFailback(ctx, *f)
		}),
	}
	common(failback)
	failback.Flags().StringVar(&f.to, "to", "", "the site failed over by the drill, to bring back")
	_ = failback.MarkFlagRequired("to")
	cmd.AddCommand(failover, failback)
	return cmd
}

// drill is a drill in progress: the deployment, the report being written,
// and where its files go.
type drill struct {
	s      *session
	f      drillFlags
	dep    *devSite
	rep    *drillReport
	dir    string // DIR/drills/ID
	from   devSubsite
	to     devSubsite
	ackLog string

	mu sync.Mutex // guards rep.Events and rep.Lag while the sampler runs
}

const drillsDir = "drills"

// currentDrill names the file that holds the id of the newest drill.
const currentDrill = "current"

func (d *drill) event(format string, args ...any) {
	now := time.Now()
	d.mu.Lock()
	d.rep.Events = append(d.rep.Events, drillEvent{At: now.UTC(), Offset: now.Sub(d.rep.Started).Seconds(), What: fmt.Sprintf(format, args...)})
	d.mu.Unlock()
	fmt.Fprintf(d.s.errOut, "%7.2fs  %s\n", now.Sub(d.rep.Started).Seconds(), fmt.Sprintf(format, args...))
}

func (d *drill) site(name string) (devSubsite, error) {
	for _, st := range d.dep.Sites {
		if st.Name == name {
			return st, nil
		}
	}
	names := make([]string, len(d.dep.Sites))
	for i, st := range d.dep.Sites {
		names[i] = st.Name
	}
	return devSubsite{}, fmt.Errorf("ops: drill: no site %q in %s (sites: %s)", name, d.dep.Dir, strings.Join(names, ", "))
}

// openDeployment reads the multi-site dev deployment in dir.
func openDeployment(dir string) (*devSite, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("ops: --dir: %w", err)
	}
	dep, err := readSite(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s: a drill runs on a deployment of ops dev up --sites N --dir %s", ErrNoSite, abs, dir)
		}
		return nil, err
	}
	if len(dep.Sites) < 2 {
		return nil, fmt.Errorf("ops: drill: %s holds a lone site; a drill needs two or more (ops dev up --sites 3)", abs)
	}
	return dep, nil
}

func (s *session) drillFailover(ctx context.Context, f drillFlags) error {
	dep, err := openDeployment(f.dir)
	if err != nil {
		return err
	}
	kind := "planned"
	if f.unplanned {
		kind = "unplanned"
	}
	now := time.Now()
	d := &drill{s: s, f: f, dep: dep, rep: &drillReport{
		ID: "d-" + now.UTC().Format("20060102-150405"), Kind: kind, From: f.from, To: f.to, Deployment: dep.Dir, Started: now.UTC(),
		Stage: stageFailover, RTO: drillFigure{Target: f.rtoTarget.Seconds()}, RPO: rpoFigure{Target: 0},
	}}
	if f.from == f.to {
		return fmt.Errorf("ops: drill: --from and --to are both %q", f.from)
	}
	if f.rate <= 0 {
		return fmt.Errorf("ops: drill: --rate %g: must be positive", f.rate)
	}
	if prev, err := s.loadDrill(f); err == nil && prev.rep.Stage != stageFailedBack {
		return fmt.Errorf("ops: drill %s (%s of %s to %s) is at stage %q: finish it first with ops drill failback --to %s --dir %s",
			prev.rep.ID, prev.rep.Kind, prev.rep.From, prev.rep.To, prev.rep.Stage, prev.rep.From, f.dir)
	}
	if d.from, err = d.site(f.from); err != nil {
		return err
	}
	if d.to, err = d.site(f.to); err != nil {
		return err
	}
	d.rep.Plan = d.failoverPlan()
	d.rep.Checks = s.drillChecks(ctx, d, false)
	d.printPlan()
	failed := 0
	for _, c := range d.rep.Checks {
		if !c.OK {
			failed++
		}
	}
	if f.dryRun {
		if failed > 0 {
			return fmt.Errorf("ops: drill: %d of %d checks failed (dry run: nothing changed)", failed, len(d.rep.Checks))
		}
		if s.o.json {
			return s.printJSON(d.rep)
		}
		fmt.Fprintln(s.out, "dry run: every check passed; nothing changed")
		return nil
	}
	if failed > 0 {
		return fmt.Errorf("ops: drill: %d of %d checks failed; nothing changed", failed, len(d.rep.Checks))
	}
	if err := d.makeDir(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dep.Dir, drillsDir, currentDrill), []byte(d.rep.ID+"\n"), 0o644); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	d.ackLog = filepath.Join(d.dir, "acked.jsonl")
	d.event("drill %s: %s failover of %s to %s; checks passed", d.rep.ID, kind, f.from, f.to)
	if err := d.save(); err != nil {
		return err
	}

	sums, err := s.drillDigests(ctx, d.dep.Sites)
	if err != nil {
		return err
	}
	d.rep.DigestsBefore = sums

	ms, err := s.siteMaps(ctx, dep.Sites)
	if err != nil {
		return err
	}
	src, err := s.tlsSource()
	if err != nil {
		return err
	}
	w, err := newDrillLoad(d.rep.ID, dep.Sites, ms, f.to, f.rate, d.ackLog, src)
	if err != nil {
		return err
	}
	defer w.close()
	w.setPhase("before")
	stop := d.background(ctx, w)
	d.event("verifying workload started: %.0f writes/s from a client of each site", f.rate)
	if err := timex.Sleep(ctx, f.warmup); err != nil {
		stop()
		return err
	}

	err = d.failover(ctx, w)
	stop()
	d.rep.Switches = w.switchesSnapshot()
	d.rep.Writes = w.counts()
	return d.finish(ctx, err)
}

// finish ends a drill step that returned err: the verdict fails on an
// error, the report is written and noted, and the summary printed (or the
// error returned with how to recover).
func (d *drill) finish(ctx context.Context, err error) error {
	if err != nil {
		d.rep.Verdict, d.rep.Reasons = verdictFail, []string{err.Error()}
		d.event("drill failed: %v", err)
	}
	if werr := d.writeReport(ctx); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("ops: drill %s: %w\n%s", d.rep.ID, err, d.recoveryHint())
	}
	return d.printSummary()
}

// Stages of a drill, as its report records them.
const (
	stageFailover   = "failover"
	stageFailedOver = "failed over"
	stageFailback   = "failback"
	stageFailedBack = "failed back"
)

// recoveryHint says how to bring the failed site back after a drill step
// that stopped half-way.
func (d *drill) recoveryHint() string {
	return fmt.Sprintf("%s may be left %s: bring it back with ops drill failback --to %s --dir %s (it resumes from any stage), or by hand with ops --addr <a node of each site> sites state %s active",
		d.rep.From, map[bool]string{true: "killed and fenced", false: "draining or fenced"}[d.rep.Kind == "unplanned"], d.rep.From, d.f.dir, d.rep.From)
}

// save writes report.json as it stands, so that a drill stopped half-way
// (an error, Ctrl-C, a killed ops) can be failed back.
func (d *drill) save() error {
	d.mu.Lock()
	b, err := json.MarshalIndent(d.rep, "", "  ")
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ops: report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, reportJSON), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	return nil
}

// failoverPlan lists what the failover will do.
func (d *drill) failoverPlan() []string {
	a, b := d.from.Name, d.to.Name
	if d.f.unplanned {
		return []string{
			"start the verifying workload at every site",
			fmt.Sprintf("kill %s's nodes and relay (SIGKILL)", a),
			fmt.Sprintf("fence %s (clients to %s) in the maps of the other sites", a, b),
			fmt.Sprintf("count the writes acknowledged at %s that %s lacks at the cut; list them in lost-writes.jsonl", a, b),
			fmt.Sprintf("measure RTO: until a write of %s's clients is acknowledged at %s", a, b),
		}
	}
	return []string{
		"start the verifying workload at every site",
		fmt.Sprintf("%s draining (clients to %s): its routers refuse writes", a, b),
		fmt.Sprintf("wait until %s has applied every write %s acknowledged (RPO 0)", b, a),
		fmt.Sprintf("fence %s (clients to %s) in every site's map", a, b),
		fmt.Sprintf("measure RTO: until a write of %s's clients is acknowledged at %s", a, b),
	}
}

func (d *drill) printPlan() {
	out := d.s.out
	if d.s.o.json {
		out = d.s.errOut
	}
	fmt.Fprintf(out, "drill: %s failover of %s to %s (deployment %s)\nplan:\n", d.rep.Kind, d.rep.From, d.rep.To, d.dep.Dir)
	for i, p := range d.rep.Plan {
		fmt.Fprintf(out, "  %d. %s\n", i+1, p)
	}
	fmt.Fprintln(out, "checks:")
	for _, c := range d.rep.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
}

// failover runs the failover proper, from the moment RTO counts.
func (d *drill) failover(ctx context.Context, w *drillLoad) error {
	s, a, b := d.s, d.from, d.to
	t0 := time.Now()
	d.rep.FailoverAt = t0.UTC()
	w.setPhase("failover")
	if d.f.unplanned {
		for _, p := range d.killSite(a) {
			d.event("killed %s (pid %d)", p.ID, p.PID)
		}
		for _, st := range d.dep.Sites {
			if st.Name == a.Name {
				continue
			}
			v, err := s.setSiteState(ctx, st.Nodes[0].GRPCAddr, a.Name, gizzard.SiteFenced, b.Name)
			if err != nil {
				return fmt.Errorf("fence %s in %s's map: %w", a.Name, st.Name, err)
			}
			d.event("%s fenced in %s's map (version %d): its clients go to %s", a.Name, st.Name, v, b.Name)
		}
	} else {
		v, err := s.setSiteState(ctx, a.Nodes[0].GRPCAddr, a.Name, gizzard.SiteDraining, b.Name)
		if err != nil {
			return fmt.Errorf("set %s draining: %w", a.Name, err)
		}
		if _, err := s.waitDevSite(ctx, a.Nodes, v, time.Now().Add(d.f.wait)); err != nil {
			return fmt.Errorf("%s's nodes adopting the draining map: %w", a.Name, err)
		}
		d.event("%s draining (map version %d, on every node of it): it holds its clients' writes, then refuses them", a.Name, v)
		_ = d.save()
		if err := d.waitApplied(ctx, a, []devSubsite{b}); err != nil {
			return err
		}
		d.event("%s has applied every write %s acknowledged", b.Name, a.Name)
		for _, st := range d.dep.Sites {
			v, err := s.setSiteState(ctx, st.Nodes[0].GRPCAddr, a.Name, gizzard.SiteFenced, b.Name)
			if err != nil {
				return fmt.Errorf("fence %s in %s's map: %w", a.Name, st.Name, err)
			}
			d.event("%s fenced in %s's map (version %d)", a.Name, st.Name, v)
		}
	}

	// The cut: the writes acknowledged at A that B lacks now.
	missing, err := d.cut(ctx, w)
	if err != nil {
		return err
	}
	d.rep.RPO.Records = len(missing)
	d.rep.RPO.Met = len(missing) <= d.rep.RPO.Target
	if !d.f.unplanned && !d.rep.RPO.Met {
		return fmt.Errorf("planned failover: %d writes acknowledged at %s are missing at %s after the drain (RPO target %d)", len(missing), a.Name, b.Name, d.rep.RPO.Target)
	}
	if len(missing) > 0 {
		d.rep.RPO.LostFile = filepath.Join(d.dir, "lost-writes.jsonl")
		if err := writeJSONLines(d.rep.RPO.LostFile, missing); err != nil {
			return err
		}
	}
	d.event("cut: %d writes acknowledged at %s missing at %s", len(missing), a.Name, b.Name)
	_ = d.save()

	// RTO: until a write of A's clients is acknowledged at B.
	at, err := d.waitAck(ctx, w, a.Name, b.Name, t0)
	if err != nil {
		return err
	}
	d.rep.RTO.Actual = at.Sub(t0).Seconds()
	d.rep.RTO.Met = at.Sub(t0) < d.f.rtoTarget
	d.event("first write of %s's clients acknowledged at %s: RTO %.3fs", a.Name, b.Name, d.rep.RTO.Actual)
	if err := timex.Sleep(ctx, d.f.after); err != nil {
		return err
	}
	d.rep.Stage = stageFailedOver
	d.rep.Verdict = verdictInProgress
	d.rep.Reasons = []string{fmt.Sprintf("%s is fenced; run ops drill failback --to %s", a.Name, a.Name)}
	return nil
}

// killSite kills every process of st (SIGKILL) and returns them.
func (d *drill) killSite(st devSubsite) []devNode {
	procs := append([]devNode(nil), st.Nodes...)
	procs = append(procs, devNode{ID: st.Name + "/relay", PID: st.Relay.PID})
	var out []devNode
	for i := range procs {
		p := procs[i]
		if i < len(st.Nodes) {
			p.ID = st.Name + "/" + p.ID
		}
		if p.PID > 0 && processAlive(p.PID) && kill(p.PID) == nil {
			out = append(out, p)
		}
	}
	// Wait until they are gone, so that the cut is after the kill.
	deadline := time.Now().Add(d.f.wait)
	for _, p := range out {
		for processAlive(p.PID) && time.Now().Before(deadline) {
			_ = timex.Sleep(context.Background(), 10*time.Millisecond)
		}
	}
	return out
}

// cut returns the writes acknowledged at A (so far) that B lacks. After an
// unplanned failover, a write B's relay fetched before the kill may still
// be applying: the cut is taken once two reads a second apart agree.
func (d *drill) cut(ctx context.Context, w *drillLoad) ([]vwrite, error) {
	var prev []vwrite
	c, err := d.siteClient(d.to)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(d.f.wait)
	for try := 0; ; try++ {
		var atA []vwrite
		for _, v := range w.snapshot() {
			if v.Site == d.from.Name {
				atA = append(atA, v)
			}
		}
		missing, err := missingAt(ctx, c, atA)
		if err != nil {
			return nil, fmt.Errorf("cut: read %s: %w", d.to.Name, err)
		}
		if !d.f.unplanned || (try > 0 && slices.EqualFunc(prev, missing, func(x, y vwrite) bool { return x.Key == y.Key })) {
			return missing, nil
		}
		if time.Now().After(deadline) {
			return missing, nil
		}
		prev = missing
		if err := timex.Sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
}

// siteClient dials the nodes of st as the drill's other clients do.
func (d *drill) siteClient(st devSubsite) (*client.Client, error) {
	src, err := d.s.tlsSource()
	if err != nil {
		return nil, err
	}
	return client.Dial(siteAddrs(st), client.WithTLS(src))
}

// waitAck waits until the workload has a write of home's clients
// acknowledged at site after t, and returns when it was acknowledged.
func (d *drill) waitAck(ctx context.Context, w *drillLoad, home, site string, t time.Time) (time.Time, error) {
	deadline := time.Now().Add(d.f.wait)
	for {
		for _, v := range w.snapshot() {
			if v.Home == home && v.Site == site && v.At.After(t) {
				return v.At, nil
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no write of %s's clients acknowledged at %s within %s", home, site, d.f.wait)
		}
		if err := timex.Sleep(ctx, 20*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}

// waitApplied waits until every site of to has applied every write that
// the nodes of from keep in their outboxes now (the newest entry of each,
// read once): the watermark of each such site of each node of from is at
// or past it.
func (d *drill) waitApplied(ctx context.Context, from devSubsite, to []devSubsite) error {
	want := map[string]uint64{} // node -> newest outbox entry
	deadline := time.Now().Add(d.f.wait)
	for {
		pending := []string{}
		// Each site of to: its nodes' status, read once per round.
		applied := make([]map[string]uint64, len(to))
		for i, t := range to {
			applied[i] = d.appliedFrom(ctx, t, from.Name)
		}
		for _, n := range from.Nodes {
			st, err := d.s.nodeReplication(ctx, n.GRPCAddr)
			if err != nil {
				pending = append(pending, fmt.Sprintf("%s/%s: %v", from.Name, n.ID, err))
				continue
			}
			if _, ok := want[n.ID]; !ok {
				want[n.ID] = st.OutboxNewestSeq
			}
			for i, t := range to {
				if wm := max(st.SiteWatermarks[t.Name], applied[i][n.ID]); want[n.ID] > 0 && wm < want[n.ID] {
					pending = append(pending, fmt.Sprintf("%s has applied %s/%s up to %d of %d", t.Name, from.Name, n.ID, wm, want[n.ID]))
				}
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not applied within %s: %s", d.f.wait, strings.Join(pending, "; "))
		}
		if err := timex.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// appliedFrom returns, by node of site origin, how far site t has applied
// its entries, as t's own nodes say (the origin hears of it only at its
// next outbox trim, a second later).
func (d *drill) appliedFrom(ctx context.Context, t devSubsite, origin string) map[string]uint64 {
	wm := map[string]uint64{}
	for _, n := range t.Nodes {
		st, err := d.s.nodeReplication(ctx, n.GRPCAddr)
		if err != nil {
			continue
		}
		for _, o := range st.Origins {
			if o.OriginSiteName == origin {
				wm[o.OriginNode] = max(wm[o.OriginNode], o.Watermark)
			}
		}
	}
	return wm
}

// nodeReplication asks one node for its replication status.
func (s *session) nodeReplication(ctx context.Context, addr string) (*pb.ReplicationStatusResponse, error) {
	cc, err := s.conn(addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	return pb.NewReplicaClient(cc).ReplicationStatus(rctx, &pb.ReplicationStatusRequest{})
}

// siteMaps reads the map of every site (from its node 0).
func (s *session) siteMaps(ctx context.Context, sites []devSubsite) (map[string]*gizzard.Map, error) {
	out := map[string]*gizzard.Map{}
	for _, st := range sites {
		m, err := s.getMap(ctx, st.Nodes[0].GRPCAddr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", st.Name, err)
		}
		out[st.Name] = m
	}
	return out, nil
}

// background starts the workload and the lag sampler; stop ends both and
// waits for them.
func (d *drill) background(ctx context.Context, w *drillLoad) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.run(ctx) })
	wg.Go(func() { d.sampleLag(ctx) })
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
}

// sampleLag records, every sampleTick, the lag of every path between live
// sites (the largest over the origin's nodes).
func (d *drill) sampleLag(ctx context.Context) {
	for {
		now := time.Now()
		for _, st := range d.dep.Sites {
			if !processAlive(st.Nodes[0].PID) {
				continue
			}
			lags := map[string]float64{}
			for _, n := range st.Nodes {
				rs, err := d.s.nodeReplication(ctx, n.GRPCAddr)
				if err != nil {
					continue
				}
				for _, o := range rs.Origins {
					lag, _ := pathLag(o, now)
					path := o.OriginSiteName + " → " + st.Name
					lags[path] = max(lags[path], lag.Seconds())
				}
			}
			d.mu.Lock()
			for _, p := range slices.Sorted(maps.Keys(lags)) {
				d.rep.Lag = append(d.rep.Lag, lagSample{Offset: now.Sub(d.rep.Started).Seconds(), Path: p, Seconds: lags[p]})
			}
			d.mu.Unlock()
		}
		if timex.Sleep(ctx, d.f.sampleTick) != nil {
			return
		}
	}
}

// writeJSONLines writes vs to path, one JSON object per line.
func writeJSONLines[T any](path string, vs []T) error {
	var b strings.Builder
	for _, v := range vs {
		j, err := json.Marshal(v)
		if err != nil {
			return err
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	return nil
}

// makeDir creates the drill's directory, DIR/drills/ID, making the id
// unique if a drill of the same second exists.
func (d *drill) makeDir() error {
	parent := filepath.Join(d.dep.Dir, drillsDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("ops: %w", err)
	}
	id := d.rep.ID
	for k := 2; ; k++ {
		err := os.Mkdir(filepath.Join(parent, id), 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("ops: %w", err)
		}
		id = fmt.Sprintf("%s-%d", d.rep.ID, k)
	}
	d.rep.ID, d.dir = id, filepath.Join(parent, id)
	return nil
}
