package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/replication"
	"github.com/aviarydb/aviary/replication/natsx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The relay workload: three in-process one-node sites, each with its
// embedded nats-server and its relay, on this machine. Writes at a steady
// rate at site A; the lag of a write is from its acknowledgement at A to
// the moment a read at B returns it (sampled: about lagSamplesPerSec writes
// a second, each polled for at B every lagPollEvery; a fixed number, so
// that the probe's reads at B do not grow with the rate and become the load
// measured: one write in 10 at 11,000/s polled 20,000 times a second).
// Then rising rates, to find the highest rate of writes accepted at A that
// B keeps up with; they stop rising where A no longer accepts 95% of the
// rate (its own write path, or the paced writers waiting for its answers,
// is then the limit) or B falls behind. In the same run, raw JetStream
// publish+consume on A's nats-server, before the load and after it, gives
// the baseline: the higher of the two.
const (
	relayWorkload    = "relay"
	lagSamplesPerSec = 100
	lagPollEvery     = time.Millisecond
	lagGiveUp        = 30 * time.Second // a sample not at B by then is an error
	relayValue       = 100              // bytes per value
)

// relayConfig configures the relay workload.
type relayConfig struct {
	Rate     int           // writes/s of the steady phase
	Duration time.Duration // of the steady phase, and of each step
	Steps    []int         // rates tried for the sustained maximum
	Writers  int           // concurrent writers at A
	Stream   bool          // writers share a write stream (client.Stream), not a unary call each
	RawMsgs  int           // messages of the raw JetStream baseline
}

type benchSite struct {
	name string
	n    *node.Node
	cc   *grpc.ClientConn
	data pb.DataClient
	ns   pb.NameserverClient
	put  func(context.Context, *pb.PutRequest) (*pb.WriteResult, error) // the writers' Put
	url  string
	stop func()
}

func startBenchSite(ctx context.Context, dir, name string, id uint32) (*benchSite, error) {
	cfg := node.Config{
		NodeID: "node-0", SiteName: name, SiteID: id, DataDir: dir, DefaultShards: 4,
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0",
		CacheBytes: 64 << 20, Registry: nil,
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(rctx) }()
	s := &benchSite{name: name, n: n, stop: func() { cancel(); <-done }}
	if s.cc, err = dial(n.GRPCAddr()); err != nil {
		s.stop()
		return nil, err
	}
	s.data, s.ns = pb.NewDataClient(s.cc), pb.NewNameserverClient(s.cc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := s.ns.Status(ctx, &pb.StatusRequest{})
		if err == nil && st.Ready {
			break
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("site %s not ready: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	m, err := s.siteMap(ctx)
	if err != nil {
		s.close()
		return nil, err
	}
	s.url = m.Sites[name].NATSURL
	return s, nil
}

func (s *benchSite) close() {
	if s.cc != nil {
		_ = s.cc.Close()
	}
	s.stop()
}

func (s *benchSite) siteMap(ctx context.Context) (*gizzard.Map, error) {
	r, err := s.ns.GetMap(ctx, &pb.GetMapRequest{})
	if err != nil {
		return nil, err
	}
	m := gizzard.NewMap()
	return m, json.Unmarshal(r.MapJson, m)
}

type replicaApplier struct{ c pb.ReplicaClient }

func (a replicaApplier) ApplyRemote(ctx context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	return a.c.ApplyRemote(ctx, r)
}

// runRelay runs the relay workload and prints its rows to out.
func runRelay(ctx context.Context, c relayConfig, out io.Writer) error {
	dir, err := os.MkdirTemp("", "aviary-bench-relay-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var sites []*benchSite
	defer func() {
		for _, s := range sites {
			s.close()
		}
	}()
	for i, name := range []string{"site-a", "site-b", "site-c"} {
		s, err := startBenchSite(ctx, fmt.Sprintf("%s/%s", dir, name), name, uint32(i+1))
		if err != nil {
			return err
		}
		sites = append(sites, s)
	}
	for _, s := range sites {
		for _, o := range sites {
			if o == s {
				continue
			}
			b, _ := json.Marshal(gizzard.Change{Who: "bench", At: time.Now(), Steps: []gizzard.Step{{Op: gizzard.OpAddSite, Site: &gizzard.Site{Name: o.name, ID: uint32(indexOf(sites, o) + 1), NATSURL: o.url}}}})
			if _, err := s.ns.Propose(ctx, &pb.ProposeRequest{ChangeJson: b}); err != nil {
				return err
			}
		}
	}
	rctx, stopRelays := context.WithCancel(context.Background())
	var relays sync.WaitGroup
	defer func() { stopRelays(); relays.Wait() }()
	for _, s := range sites {
		var sources []replication.Source
		for _, o := range sites {
			if o != s {
				sources = append(sources, replication.Source{Name: o.name, ID: uint32(indexOf(sites, o) + 1), NATSURL: o.url})
			}
		}
		r, err := replication.NewRelay(replication.RelayConfig{LocalSite: s.name, Sources: sources, Applier: replicaApplier{pb.NewReplicaClient(s.cc)}})
		if err != nil {
			return err
		}
		relays.Go(func() { _ = r.Run(rctx) })
	}
	a, b := sites[0], sites[1]
	how := "a unary Put each"
	a.put = unaryPutter{a.data}.Put
	if c.Stream {
		how = "one write stream (client.Stream) shared by the writers"
		cl, err := dialClient(a.n.GRPCAddr())
		if err != nil {
			return err
		}
		defer cl.Close()
		st := cl.Stream()
		defer st.Close()
		a.put = st.Put
	}
	fmt.Fprintf(out, "relay: 3 in-process one-node sites (embedded nats-server, relay each), %d-byte values, writes at %s over %s, lag read at %s (about %d writes a second sampled)\n",
		relayValue, a.name, how, b.name, lagSamplesPerSec)

	// Raw JetStream on site-a's nats-server, before the sites carry any
	// load and again after the steps: the ratio is against the higher of
	// the two (after the steps the three stores may still be compacting
	// what they took, which slows the second).
	nc, js, err := natsx.Connect(ctx, a.url, "bench-raw")
	if err != nil {
		return err
	}
	defer nc.Close()
	rawRun := func(name string) (natsx.RawResult, error) {
		subject := "bench.raw." + strings.ToLower(name)
		if _, err := natsx.EnsureStream(ctx, js, natsx.StreamConfig{Name: "BENCH_RAW_" + name, Subjects: []string{subject}, MaxAge: time.Hour, Replicas: 1}); err != nil {
			return natsx.RawResult{}, err
		}
		r, err := natsx.RawPublishConsume(ctx, js, "BENCH_RAW_"+name, subject, c.RawMsgs, 256)
		if err != nil {
			return r, err
		}
		// Its messages leave site-a's disk to the load measured next.
		return r, js.DeleteStream(ctx, "BENCH_RAW_"+name)
	}
	rawBefore, err := rawRun("BEFORE")
	if err != nil {
		return err
	}

	// Warm up: the first write reaches B once the paths run.
	if _, err := lagRun(ctx, a, b, 50, 2*time.Second, c.Writers, "warmup"); err != nil {
		return err
	}
	fmt.Fprintf(out, "%-24s %10s %10s %10s %10s %10s %8s\n", "phase", "target/s", "writes/s", "lag p50", "lag p99", "lag max", "errors")
	steady, err := lagRun(ctx, a, b, c.Rate, c.Duration, c.Writers, "steady")
	if err != nil {
		return err
	}
	steady.print(out)
	best, limit := 0.0, "no step"
	if len(c.Steps) > 0 {
		limit = fmt.Sprintf("the last step, %d/s", c.Steps[len(c.Steps)-1])
	}
	for _, rate := range c.Steps {
		r, err := lagRun(ctx, a, b, rate, c.Duration, c.Writers, "step")
		if err != nil {
			return err
		}
		r.print(out)
		// B kept up with what A accepted: the lag stayed under a second
		// at the 99th percentile, so it did not grow without bound over
		// the step. The rates go on rising while A accepts 95% of each.
		if r.p99 >= time.Second || r.errs > 0 {
			limit = fmt.Sprintf("%s's lag (p99 %s) or %d errors at %d/s", b.name, fmtDur(int64(r.p99)), r.errs, rate)
			break
		}
		best = max(best, r.achieved)
		if r.achieved < 0.95*float64(rate) {
			limit = fmt.Sprintf("%s's own writes at %d/s (%.0f/s accepted from %d paced writers, each waiting for its answers)", a.name, rate, r.achieved, c.Writers)
			break
		}
	}

	rawAfter, err := rawRun("AFTER")
	if err != nil {
		return err
	}
	for _, r := range []struct {
		when string
		natsx.RawResult
	}{{"before", rawBefore}, {"after", rawAfter}} {
		fmt.Fprintf(out, "%-24s %10s %10.0f %10s %10s %10s %8d\n", "raw jetstream "+r.when, "-", r.PerSecond, fmtDur(int64(r.P50)), fmtDur(int64(r.P99)), "-", 0)
	}
	raw := max(rawBefore.PerSecond, rawAfter.PerSecond)
	fmt.Fprintf(out, "sustained: %.0f writes/s at %s with %s keeping up (limited by %s); raw JetStream %.0f msgs/s (the higher of before and after); ratio %.2f (target >= 0.30)\n", best, a.name, b.name, limit, raw, best/raw)
	fmt.Fprintf(out, "steady %d writes/s: lag p50 %s, p99 %s (target p99 < 100ms)\n", c.Rate, fmtDur(int64(steady.p50)), fmtDur(int64(steady.p99)))
	return nil
}

func indexOf(sites []*benchSite, s *benchSite) int {
	for i, o := range sites {
		if o == s {
			return i
		}
	}
	return -1
}

type lagResult struct {
	name          string
	target        int
	achieved      float64
	p50, p99, max time.Duration
	errs          int64
}

func (r lagResult) print(out io.Writer) {
	fmt.Fprintf(out, "%-24s %10d %10.0f %10s %10s %10s %8d\n", r.name+fmt.Sprintf(" %d/s", r.target), r.target, r.achieved, fmtDur(int64(r.p50)), fmtDur(int64(r.p99)), fmtDur(int64(r.max)), r.errs)
}

var lagSeq atomic.Uint64

// lagRun writes at rate for d at a (paced: each writer sends at its share
// of the rate, on a schedule, not as fast as it can) and samples the lag to
// b.
func lagRun(ctx context.Context, a, b *benchSite, rate int, d time.Duration, writers int, name string) (lagResult, error) {
	res := lagResult{name: name, target: rate}
	hist := NewHistogram()
	var mu sync.Mutex
	var written, errs atomic.Int64
	var samples sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	interval := time.Duration(float64(time.Second) * float64(writers) / float64(rate))
	sampleEvery := uint64(max(1, rate/lagSamplesPerSec))
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			next := start.Add(time.Duration(w) * interval / time.Duration(writers))
			for {
				if now := time.Now(); now.Before(next) {
					time.Sleep(next.Sub(now)) // pacing, not synchronisation
				}
				if !time.Now().Before(end) || ctx.Err() != nil {
					return
				}
				next = next.Add(interval)
				seq := lagSeq.Add(1)
				key := fmt.Appendf(nil, "lag-%d", seq)
				_, err := a.put(ctx, &pb.PutRequest{Table: "statuses", Key: key, Value: make([]byte, relayValue)})
				if err != nil {
					errs.Add(1)
					continue
				}
				acked := time.Now()
				written.Add(1)
				if seq%sampleEvery != 0 {
					continue
				}
				samples.Go(func() {
					for ctx.Err() == nil {
						if time.Since(acked) > lagGiveUp {
							errs.Add(1) // never seen at B: lost, or B fell far behind
							return
						}
						_, err := b.data.Get(ctx, &pb.GetRequest{Table: "statuses", Key: key})
						if err == nil {
							mu.Lock()
							hist.RecordDuration(time.Since(acked))
							mu.Unlock()
							return
						}
						if status.Code(err) != codes.NotFound {
							errs.Add(1)
							return
						}
						time.Sleep(lagPollEvery) // polling interval
					}
				})
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	samples.Wait()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if hist.Count() == 0 {
		return res, errors.New("relay: no lag sample")
	}
	res.achieved = float64(written.Load()) / elapsed.Seconds()
	res.p50, res.p99, res.max = time.Duration(hist.Quantile(0.5)), time.Duration(hist.Quantile(0.99)), time.Duration(hist.Max())
	res.errs = errs.Load()
	return res, nil
}
