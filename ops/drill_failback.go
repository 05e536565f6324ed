package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/internal/timex"
)

// loadDrill reads the newest drill of the deployment in dir.
func (s *session) loadDrill(f drillFlags) (*drill, error) {
	dep, err := openDeployment(f.dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dep.Dir, drillsDir, currentDrill))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ops: drill: no drill in %s: run ops drill failover first", dep.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("ops: %w", err)
	}
	id := strings.TrimSpace(string(b))
	dir := filepath.Join(dep.Dir, drillsDir, id)
	rb, err := os.ReadFile(filepath.Join(dir, reportJSON))
	if err != nil {
		return nil, fmt.Errorf("ops: drill %s: %w", id, err)
	}
	rep := &drillReport{}
	if err := json.Unmarshal(rb, rep); err != nil {
		return nil, fmt.Errorf("ops: drill %s: %s: %w", id, reportJSON, err)
	}
	d := &drill{s: s, f: f, dep: dep, rep: rep, dir: dir, ackLog: filepath.Join(dir, "acked.jsonl")}
	if d.from, err = d.site(rep.From); err != nil {
		return nil, err
	}
	if d.to, err = d.site(rep.To); err != nil {
		return nil, err
	}
	return d, nil
}

func (s *session) drillFailback(ctx context.Context, f drillFlags) error {
	d, err := s.loadDrill(f)
	if err != nil {
		return err
	}
	if d.rep.From != f.to {
		return fmt.Errorf("ops: drill %s failed %s over, not %s", d.rep.ID, d.rep.From, f.to)
	}
	if d.rep.Stage == stageFailedBack {
		return fmt.Errorf("ops: drill %s has failed %s back already: nothing to fail back (ops drill failover starts a new drill)", d.rep.ID, d.rep.From)
	}
	if f.rate <= 0 {
		return fmt.Errorf("ops: drill: --rate %g: must be positive", f.rate)
	}
	if d.rep.Stage != stageFailedOver {
		fmt.Fprintf(s.errOut, "note: drill %s stopped at stage %q; failing %s back from there\n", d.rep.ID, d.rep.Stage, d.rep.From)
	}
	d.rep.Stage = stageFailback
	d.rep.FailbackChecks = s.drillChecks(ctx, d, true)
	failed := 0
	for _, c := range d.rep.FailbackChecks {
		if !c.OK {
			failed++
		}
		fmt.Fprintf(s.errOut, "check %s: %v: %s\n", c.Name, c.OK, c.Detail)
	}
	if failed > 0 {
		return fmt.Errorf("ops: drill: %d of %d failback checks failed; nothing changed", failed, len(d.rep.FailbackChecks))
	}
	d.event("failback of %s (from %s) started", d.from.Name, d.to.Name)
	return d.finish(ctx, d.failback(ctx))
}

// failback brings A back: started again, recovering until caught up and
// verified, then active.
func (d *drill) failback(ctx context.Context) error {
	s, a, b := d.s, d.from, d.to
	if len(deadProcs(a)) > 0 {
		if err := d.restartSite(ctx); err != nil {
			return err
		}
		a = d.from
	}
	// A's own map may still say active (it was killed while active):
	// recovering first, everywhere, before any client returns.
	for _, st := range append([]devSubsite{a}, d.others(a.Name)...) {
		v, err := s.setSiteState(ctx, st.Nodes[0].GRPCAddr, a.Name, gizzard.SiteRecovering, b.Name)
		if err != nil {
			return fmt.Errorf("set %s recovering in %s's map: %w", a.Name, st.Name, err)
		}
		if st.Name == a.Name {
			if _, err := s.waitDevSite(ctx, a.Nodes, v, time.Now().Add(d.f.wait)); err != nil {
				return fmt.Errorf("%s's nodes adopting the recovering map: %w", a.Name, err)
			}
		}
		d.event("%s recovering in %s's map (version %d)", a.Name, st.Name, v)
	}

	ms, err := s.siteMaps(ctx, d.dep.Sites)
	if err != nil {
		return err
	}
	src, err := s.tlsSource()
	if err != nil {
		return err
	}
	w, err := newDrillLoad(d.rep.ID, d.dep.Sites, ms, b.Name, d.f.rate, d.ackLog, src)
	if err != nil {
		return err
	}
	defer w.close()
	w.setPhase("failback")
	stop := d.background(ctx, w)
	defer stop()
	prevSwitches, prevWrites := d.rep.Switches, d.rep.Writes
	_ = d.save()
	d.event("verifying workload started again")

	// A catches up from the other sites, and they get what A held.
	for _, o := range d.others(a.Name) {
		if err := d.waitApplied(ctx, o, []devSubsite{a}); err != nil {
			return fmt.Errorf("%s catching up from %s: %w", a.Name, o.Name, err)
		}
	}
	d.event("%s has applied everything the other sites held when it returned", a.Name)
	if err := d.waitApplied(ctx, a, d.others(a.Name)); err != nil {
		return fmt.Errorf("the other sites applying %s's writes: %w", a.Name, err)
	}
	d.event("the other sites have applied every write %s kept", a.Name)
	_ = d.save()
	if d.rep.RPO.LostFile != "" {
		lost, err := readAcked(d.rep.RPO.LostFile)
		if err != nil {
			return err
		}
		still, err := d.waitPresent(ctx, b, lost)
		if err != nil {
			return err
		}
		d.rep.RPO.Recovered = len(lost) - len(still)
		d.event("%d of the %d writes missing at %s at the cut have arrived there", d.rep.RPO.Recovered, len(lost), b.Name)
	}

	ae, err := s.antiEntropy(ctx, endpoints(a, b), aeOptions{})
	if err != nil {
		return fmt.Errorf("verify %s against %s: %w", a.Name, b.Name, err)
	}
	d.rep.Verify = ae.summary()
	d.rep.VerifyOK = ae.ok()
	d.event("verify %s against %s: %s", a.Name, b.Name, d.rep.Verify)
	if !ae.ok() {
		return fmt.Errorf("%s differs from %s: %s (ops repair --sites %s,%s)", a.Name, b.Name, d.rep.Verify, a.Name, b.Name)
	}

	t1 := time.Now()
	for _, st := range append([]devSubsite{a}, d.others(a.Name)...) {
		v, err := s.setSiteState(ctx, st.Nodes[0].GRPCAddr, a.Name, gizzard.SiteActive, "")
		if err != nil {
			return fmt.Errorf("set %s active in %s's map: %w", a.Name, st.Name, err)
		}
		d.event("%s active in %s's map (version %d)", a.Name, st.Name, v)
	}
	at, err := d.waitAck(ctx, w, a.Name, a.Name, t1)
	if err != nil {
		return err
	}
	d.rep.FailbackSeconds = at.Sub(t1).Seconds()
	d.event("%s's clients write at %s again, %.3fs after it was made active", a.Name, a.Name, d.rep.FailbackSeconds)
	_ = d.save()
	if err := timex.Sleep(ctx, d.f.after); err != nil {
		return err
	}
	stop()
	d.rep.Switches = append(prevSwitches, w.switchesSnapshot()...)
	d.rep.Writes = w.counts()
	for name, c := range d.rep.Writes {
		c.Failed += prevWrites[name].Failed
		d.rep.Writes[name] = c
	}
	d.event("verifying workload stopped")

	// Every acknowledged verifying write, of the whole drill, at every site.
	acked := w.snapshot()
	d.rep.MissingAfter = map[string]int{}
	for _, st := range d.dep.Sites {
		still, err := d.waitPresent(ctx, st, acked)
		if err != nil {
			return err
		}
		d.rep.MissingAfter[st.Name] = len(still)
		d.event("%s holds %d of the %d acknowledged verifying writes", st.Name, len(acked)-len(still), len(acked))
	}
	// Writes in flight when the workload stopped were not acknowledged
	// but may be journaled somewhere: they arrive, and the digests agree,
	// a moment later.
	deadline := time.Now().Add(d.f.wait)
	for {
		sums, err := s.drillDigests(ctx, d.dep.Sites)
		if err != nil {
			return err
		}
		d.rep.DigestsAfter = sums
		if digestsDiffer(sums) == "" || time.Now().After(deadline) {
			break
		}
		if err := timex.Sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	d.rep.Stage = stageFailedBack
	d.rep.Verdict, d.rep.Reasons = d.verdict()
	d.event("verdict: %s", d.rep.Verdict)
	return nil
}

// others returns the sites other than name.
func (d *drill) others(name string) []devSubsite {
	var out []devSubsite
	for _, st := range d.dep.Sites {
		if st.Name != name {
			out = append(out, st)
		}
	}
	return out
}

// restartSite starts A's nodes and relay again with their command lines
// and waits until the nodes serve.
func (d *drill) restartSite(ctx context.Context) error {
	k := -1
	for i, st := range d.dep.Sites {
		if st.Name == d.from.Name {
			k = i
		}
	}
	st := &d.dep.Sites[k]
	for i := range st.Nodes {
		n := &st.Nodes[i]
		if processAlive(n.PID) {
			continue
		}
		if len(n.Args) == 0 {
			return fmt.Errorf("%s/%s: site.json has no command line for it (a deployment of an older ops): start it by hand", st.Name, n.ID)
		}
		// Started recovering: it takes no client's write before the drill
		// sets its site recovering, then active.
		pid, err := startProcess(d.dep.Binary, append(slices.Clone(n.Args), "--start-recovering"), n.Log)
		if err != nil {
			return err
		}
		n.PID = pid
		if err := d.dep.write(); err != nil { // so that dev down stops it
			return err
		}
		d.event("started %s/%s again, recovering (pid %d)", st.Name, n.ID, pid)
	}
	if _, err := d.s.waitDevSite(ctx, st.Nodes, 0, time.Now().Add(d.f.wait)); err != nil {
		return fmt.Errorf("%s's nodes after the restart: %w", st.Name, err)
	}
	d.event("%s's nodes serve again", st.Name)
	if !processAlive(st.Relay.PID) {
		pid, err := startProcess(d.dep.RelayBinary, st.Relay.Args, st.Relay.Log)
		if err != nil {
			return err
		}
		st.Relay.PID = pid
		if err := d.dep.write(); err != nil {
			return err
		}
		d.event("started %s/relay again (pid %d)", st.Name, pid)
	}
	if err := d.s.waitRelay(ctx, *st, time.Now().Add(d.f.wait)); err != nil {
		return err
	}
	d.from = *st
	return nil
}

// waitPresent waits, up to --wait, until site st holds every write of ws,
// and returns those it still lacks then.
func (d *drill) waitPresent(ctx context.Context, st devSubsite, ws []vwrite) ([]vwrite, error) {
	c, err := d.siteClient(st)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(d.f.wait)
	for {
		missing, err := missingAt(ctx, c, ws)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", st.Name, err)
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing, nil
		}
		ws = missing
		if err := timex.Sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// deadProcs lists the processes of st that do not run.
func deadProcs(st devSubsite) []string {
	var out []string
	for _, n := range st.Nodes {
		if !processAlive(n.PID) {
			out = append(out, n.ID)
		}
	}
	if !processAlive(st.Relay.PID) {
		out = append(out, "relay")
	}
	return out
}

// endpoints names sites for antiEntropy by their node 0.
func endpoints(sites ...devSubsite) []siteEndpoint {
	out := make([]siteEndpoint, len(sites))
	for i, st := range sites {
		out[i] = siteEndpoint{Name: st.Name, Addr: st.Nodes[0].GRPCAddr}
	}
	return out
}
