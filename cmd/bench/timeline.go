package main

// The timeline workload: home timelines on an in-process 3-node site
// against Redis lists, driven the same way (the seeds' workload: Twitter's
// January 2009 peak of 350 posts/s with 120 followers on average).

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/timeline/home"
)

const timelineWorkload = "timeline" // its name in --workloads

// timelineConfig configures the timeline workload.
type timelineConfig struct {
	Users    int           // users, each with a home timeline
	Follows  int           // users each user follows (so followers per author on average)
	PostRate int           // posts/s during the fan-out phase
	Readers  int           // concurrent readers in every phase
	Many     int           // timelines per call in the many-timelines read phase
	Capacity int           // timeline capacity
	Warmup   time.Duration // not measured
	Duration time.Duration // measured, per phase
	Redis    bool          // also measure Redis
	Seed     uint64
	Profile  string        // CPU profile of the fan-out phase's measured time, if set
	Linger   time.Duration // the nodes' fan-out linger (cmd/node --fanout-linger)
	Packed   bool          // Aviary's reads ask for packed results (ReadRequest.packed)
	// ReadRate paces the reads of a second fan-out phase (reads/s, all
	// readers together); 0: half the reads/s of the first, closed-loop one.
	// Negative: no paced phase.
	ReadRate int
}

// deliveries collects when each post was delivered, by status id, so the
// measured posts (those whose Post started within the window) are matched
// exactly whichever side of the window their acceptance fell on.
type deliveries struct {
	mu   sync.Mutex
	took map[uint64]time.Duration // status id -> acceptance to delivery
	at   map[uint64]time.Time     // status id -> delivered at
}

func (d *deliveries) reset() {
	d.mu.Lock()
	d.took, d.at = map[uint64]time.Duration{}, map[uint64]time.Time{}
	d.mu.Unlock()
}

func (d *deliveries) delivered(id uint64, accepted time.Time) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.took != nil {
		d.took[id], d.at[id] = now.Sub(accepted), now
	}
}

// of returns the latencies of the given posts' deliveries, how many are
// not delivered yet, and when the last was delivered.
func (d *deliveries) of(ids []uint64) (h *Histogram, missing int, last time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h = NewHistogram()
	for _, id := range ids {
		took, ok := d.took[id]
		if !ok {
			missing++
			continue
		}
		h.RecordDuration(took)
		if at := d.at[id]; at.After(last) {
			last = at
		}
	}
	return h, missing, last
}

// followGraph draws each user's follows from a Zipf distribution over the
// users, so followers per author are heavily skewed (a few authors are
// followed by most users) with Follows on average.
func followGraph(r *rand.Rand, users, follows int) (followers map[uint64][]uint64, edges int) {
	z := rand.NewZipf(r, 1.1, 1, uint64(users-1))
	perm := r.Perm(users) // rank -> user, so popular users are not the low ids
	followers = map[uint64][]uint64{}
	for u := uint64(1); u <= uint64(users); u++ {
		seen := map[uint64]bool{u: true}
		for tries := 0; len(seen) <= follows && tries < 20*follows; tries++ {
			f := uint64(perm[z.Uint64()]) + 1
			if seen[f] {
				continue
			}
			seen[f] = true
			followers[f] = append(followers[f], u)
			edges++
		}
	}
	return followers, edges
}

func runTimeline(ctx context.Context, c timelineConfig, out io.Writer) error {
	dir, err := os.MkdirTemp("", "aviary-bench-timeline-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var dl deliveries
	s, err := startSite(ctx, dir, siteNodes, siteShards, func(cfg *node.Config) {
		cfg.Timeline = true
		cfg.Timelines.Capacity = c.Capacity
		cfg.Timelines.OnDelivered = dl.delivered
		cfg.Timelines.FanoutLinger = c.Linger
	})
	if err != nil {
		return err
	}
	defer func() { _ = s.stop() }()
	if _, _, err := s.replicate(ctx, siteNodes); err != nil {
		return err
	}
	tls := make([]pb.TimelinesClient, len(s.conns))
	data := make([]pb.DataClient, len(s.conns))
	for i, cc := range s.conns {
		tls[i], data[i] = pb.NewTimelinesClient(cc), pb.NewDataClient(cc)
	}

	r := rand.New(rand.NewPCG(c.Seed, 0))
	followers, edges := followGraph(r, c.Users, c.Follows)
	most := 0
	for _, fs := range followers {
		most = max(most, len(fs))
	}
	fmt.Fprintf(out, "timeline: in-process 3-node site (every node a timeline node, every index tree on 3 replicas), %d users, %d follow edges (Zipf: %.1f followers per author on average, most %d), capacity %d, seed %d\n",
		c.Users, edges, float64(edges)/float64(c.Users), most, c.Capacity, c.Seed)

	start := time.Now()
	if err := loadGraph(ctx, data, followers); err != nil {
		return fmt.Errorf("loading the follow graph: %w", err)
	}
	if _, err := s.drain(ctx); err != nil { // the replicas' share of the load, written after the acks
		return err
	}
	if err := createTimelines(ctx, tls, c.Users); err != nil {
		return fmt.Errorf("creating the timelines: %w", err)
	}
	fmt.Fprintf(out, "loaded %d edges (both directions) and created %d timelines x 3 replicas in %s\n", edges, c.Users, time.Since(start).Round(time.Millisecond))

	fmt.Fprintf(out, "%-28s %9s %9s %11s %9s %9s %9s %9s %9s %7s\n", "phase", "posts/s", "deliv/s", "pushes/s", "deliv p50", "deliv p99", "reads/s", "read p50", "read p99", "errors")
	aPost := func(ctx context.Context, w int, author uint64) (uint64, error) {
		resp, err := tls[w%len(tls)].Post(ctx, &pb.PostRequest{AuthorId: author})
		return resp.GetStatusId(), err
	}
	aRead := func(ctx context.Context, w int, owner uint64) error {
		_, err := tls[w%len(tls)].Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: owner, Limit: 20}}, Packed: c.Packed})
		return err
	}
	av := fanoutPhase(ctx, c, 0, followers, &dl, aPost, aRead)
	av.print(out, "aviary post+fan-out, read20", 3)
	// The same fan-out with reads paced, so that their latency is that of
	// a read under the fan-out rather than under the readers' own
	// saturation of the CPUs.
	pacedRate := c.ReadRate
	if pacedRate == 0 {
		pacedRate = int(av.readsPerSec / 2)
	}
	if pacedRate > 0 {
		paced := fanoutPhase(ctx, c, pacedRate, followers, &dl, aPost, aRead)
		paced.print(out, fmt.Sprintf("aviary post+fan-out, read20 at %d/s", pacedRate), 3)
		fmt.Fprintf(out, "read p99 under fan-out: %s with the readers back to back (%.0f reads/s), %s with %d reads/s paced (target < 5ms)\n",
			fmtDur(av.readP99), av.readsPerSec, fmtDur(paced.readP99), pacedRate)
	}
	// The same fan-out with the readers making a call that does no work:
	// what any read's p99 is bounded by while the fan-out shares the CPUs.
	checks := make([]opFunc, len(s.conns))
	for i, cc := range s.conns {
		checks[i] = healthCheck(cc)
	}
	ping := fanoutPhase(ctx, c, 0, followers, &dl, aPost, func(ctx context.Context, w int, _ uint64) error {
		return checks[w%len(checks)](ctx)
	})
	ping.print(out, "aviary post+fan-out, ping", 3)
	fmt.Fprintf(out, "# ping: a health Check per call in place of each read (the same readers, connections and fan-out, no read work): p99 %s\n", fmtDur(ping.readP99))

	var rd *redisTimelines
	var rs phaseResult
	if c.Redis {
		rdir := filepath.Join(dir, "redis")
		if err := os.MkdirAll(rdir, 0o755); err != nil {
			return err
		}
		addr, stop, err := startRedis(ctx, rdir, func(f string, a ...any) { fmt.Fprintf(out, "# "+f+"\n", a...) })
		if err != nil {
			fmt.Fprintf(out, "# redis: not measured: %v\n", err)
		} else {
			defer stop()
			rd = newRedisTimelines(addr, c.Readers+16)
			defer rd.close()
			if rs, err = redisFanoutPhase(ctx, c, followers, rd); err != nil {
				return err
			}
			rs.print(out, "redis lpush+ltrim, lrange20", 1)
		}
	}

	// Read throughput, no writes: one timeline per call, then many.
	fmt.Fprintf(out, "%-28s %11s %9s %9s %9s %7s\n", "read phase", "calls/s", "tl/s", "p50", "p99", "errors")
	readRow := func(name string, per int, res *result) float64 {
		if res == nil {
			return 0
		}
		fmt.Fprintf(out, "%-28s %11.0f %9.0f %9s %9s %7d\n", name, res.OpsPerSec(), res.OpsPerSec()*float64(per),
			fmtDur(res.Hist.Quantile(0.50)), fmtDur(res.Hist.Quantile(0.99)), res.Errors)
		return res.OpsPerSec() * float64(per)
	}
	owners := func(r *rand.Rand) uint64 { return uint64(r.IntN(c.Users)) + 1 }
	aOne := readRow("aviary read 1/call", 1, runLoop(ctx, "tl-read", "aviary", c.Readers, 0, c.Warmup, c.Duration, func(w int) opFunc {
		r, cl := newRand(), tls[w%len(tls)]
		return func(ctx context.Context) error {
			_, err := cl.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: owners(r), Limit: 20}}, Packed: c.Packed})
			return err
		}
	}))
	aMany := readRow(fmt.Sprintf("aviary read %d/call", c.Many), c.Many, runLoop(ctx, "tl-read-many", "aviary", c.Readers, 0, c.Warmup, c.Duration, func(w int) opFunc {
		r, cl := newRand(), tls[w%len(tls)]
		return func(ctx context.Context) error {
			req := &pb.ReadRequest{Queries: make([]*pb.TimelineQuery, c.Many), Packed: c.Packed}
			for i := range req.Queries {
				req.Queries[i] = &pb.TimelineQuery{Owner: owners(r), Limit: 20}
			}
			_, err := cl.Read(ctx, req)
			return err
		}
	}))
	if rd == nil {
		fmt.Fprintf(out, "# targets: 42,000 deliveries/s with delivery p99 < 1s; read p99 < 5ms; reads vs Redis: not measured\n")
		return nil
	}
	rOne := readRow("redis lrange 1/call", 1, runLoop(ctx, "tl-read", "redis", c.Readers, 0, c.Warmup, c.Duration, func(w int) opFunc {
		r := newRand()
		return func(ctx context.Context) error { _, err := rd.read(ctx, owners(r), 20); return err }
	}))
	rMany := readRow(fmt.Sprintf("redis lrange %d/pipeline", c.Many), c.Many, runLoop(ctx, "tl-read-many", "redis", c.Readers, 0, c.Warmup, c.Duration, func(w int) opFunc {
		r := newRand()
		os := make([]uint64, c.Many)
		return func(ctx context.Context) error {
			for i := range os {
				os[i] = owners(r)
			}
			_, err := rd.readMany(ctx, os, 20)
			return err
		}
	}))
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	fmt.Fprintf(out, "ratios aviary/redis: deliveries/s %.2f, delivery p99 %.2f, read p99 under fan-out %.2f; reads 1/call %.2f (target >= 0.5); aviary %d/call vs redis 1/call %.2f (target >= 1), vs redis %d/pipeline %.2f\n",
		ratio(av.delivPerSec, rs.delivPerSec), ratio(float64(av.delivP99), float64(rs.delivP99)), ratio(float64(av.readP99), float64(rs.readP99)),
		ratio(aOne, rOne), c.Many, ratio(aMany, rOne), c.Many, ratio(aMany, rMany))
	fmt.Fprintf(out, "# targets: sustain 42,000 deliveries/s with delivery p99 < 1s; read p99 < 5ms under that load; single-timeline reads >= 0.5x Redis LRANGE; many per call >= 1x Redis LRANGE\n")
	return nil
}

// loadGraph writes both directions of every follow edge through the
// routers, in batches of 1000 mutations from a few workers.
func loadGraph(ctx context.Context, data []pb.DataClient, followers map[uint64][]uint64) error {
	var muts []*pb.Mutation
	for _, a := range slices.Sorted(maps.Keys(followers)) {
		for _, f := range followers[a] {
			muts = append(muts,
				&pb.Mutation{Table: home.TableFollowers, Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: a, Id: f}}},
				&pb.Mutation{Table: home.TableFollowing, Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: f, Id: a}}})
		}
	}
	const batch, workers = 1000, 6
	var next atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				lo := int(next.Add(batch)) - batch
				if lo >= len(muts) || ctx.Err() != nil {
					return
				}
				if _, err := data[w%len(data)].Write(ctx, &pb.WriteRequest{Mutations: muts[lo:min(lo+batch, len(muts))]}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// createTimelines installs an empty timeline for every user on every
// replica (with 3 timeline nodes every node holds every timeline): the
// users are active, their timelines are in memory.
func createTimelines(ctx context.Context, tls []pb.TimelinesClient, users int) error {
	for _, c := range tls {
		for lo := 1; lo <= users; lo += 1000 {
			req := &pb.ReplicaMergeRequest{}
			for u := lo; u < min(lo+1000, users+1); u++ {
				req.Timelines = append(req.Timelines, &pb.ReplicaTimeline{Owner: uint64(u), Held: true})
			}
			if _, err := c.ReplicaMerge(ctx, req); err != nil {
				return err
			}
		}
	}
	return nil
}

// phaseResult is the measurement of a fan-out phase.
type phaseResult struct {
	postsPerSec, delivPerSec float64
	delivP50, delivP99       int64
	readsPerSec              float64
	readP50, readP99         int64
	// Paced reads: from send to answer (without the wait for the
	// schedule's time; 0 when the reads were not paced).
	sentP50, sentP99           int64
	errors                     uint64
	undelivered, postsMeasured int
	firstErr                   string
	// The Go scheduler's wait (runnable to running) over the measured
	// time, in this process: Aviary's nodes and the clients.
	schedP50, schedP99, schedP999 time.Duration
}

func (p phaseResult) print(out io.Writer, name string, replicas int) {
	fmt.Fprintf(out, "%-28s %9.0f %9.0f %11.0f %9s %9s %9.0f %9s %9s %7d\n", name, p.postsPerSec, p.delivPerSec, p.delivPerSec*float64(replicas),
		fmtDur(p.delivP50), fmtDur(p.delivP99), p.readsPerSec, fmtDur(p.readP50), fmtDur(p.readP99), p.errors)
	if p.firstErr != "" {
		fmt.Fprintf(out, "# first error: %s\n", p.firstErr)
	}
	if p.undelivered > 0 {
		fmt.Fprintf(out, "# %d of %d measured posts were not delivered within a minute after the phase\n", p.undelivered, p.postsMeasured)
	}
	if p.sentP99 > 0 {
		fmt.Fprintf(out, "# %s: reads from send to answer (not counting the wait for the schedule's time) p50 %s, p99 %s\n",
			name, fmtDur(p.sentP50), fmtDur(p.sentP99))
	}
	if p.schedP99 > 0 {
		fmt.Fprintf(out, "# %s: goroutines waited for a CPU (runnable to running) p50 %s, p99 %s, p99.9 %s\n",
			name, p.schedP50, p.schedP99, p.schedP999)
	}
}

// fanoutPhase posts at c.PostRate (paced, authors uniform) while c.Readers
// read random timelines, for warmup + duration; then waits for the
// deliveries of the measured posts (those whose Post started after the
// warmup). post (returning the status id) and read do one operation.
//
// With readRate 0 the readers read back to back (a closed loop: they keep
// the CPUs busy, so their latency includes waiting for them). With a
// positive readRate they share a schedule of readRate reads/s (an open
// loop), and a read's latency runs from the time the schedule gave it, not
// from when a reader got to it: a read that had to wait for a free reader
// counts that wait (no coordinated omission).
func fanoutPhase(ctx context.Context, c timelineConfig, readRate int, followers map[uint64][]uint64, dl *deliveries,
	post func(ctx context.Context, w int, author uint64) (uint64, error), read func(ctx context.Context, w int, owner uint64) error) phaseResult {
	dl.reset()
	start := time.Now()
	from, to := start.Add(c.Warmup), start.Add(c.Warmup+c.Duration)
	var mu sync.Mutex
	var measured []uint64 // status ids of the measured posts
	var timelines int     // their deliveries: author and followers
	readH, sentH := NewHistogram(), NewHistogram()
	var errs atomic.Uint64
	var firstErr atomic.Value
	pctx, cancel := context.WithDeadline(ctx, to)
	defer cancel()
	// settle sorts out an operation that started at t0: cut by the end of
	// the phase (stop, not counted), failed (counted), or measured.
	settle := func(t0 time.Time, err error) (stop, measure bool) {
		if pctx.Err() != nil || !time.Now().Before(to) {
			return true, false
		}
		if err != nil {
			errs.Add(1)
			firstErr.CompareAndSwap(nil, err)
			return false, false
		}
		return false, !t0.Before(from)
	}
	var wg sync.WaitGroup
	var sched0 schedLatency
	wg.Go(func() {
		if timex.Sleep(pctx, time.Until(from)) != nil {
			return
		}
		sched0 = schedNow()
		if c.Profile != "" {
			stop, err := startProfile(c.Profile)
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			_ = timex.Sleep(pctx, time.Until(to))
			if err := stop(); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}
	})
	posts := &schedule{start: start, rate: c.PostRate}
	const posters = 32
	for w := range posters {
		wg.Go(func() {
			r := newRand()
			for {
				if _, ok := posts.wait(pctx, to); !ok {
					return
				}
				author := uint64(r.IntN(c.Users)) + 1
				t0 := time.Now()
				id, err := post(pctx, w, author)
				stop, measure := settle(t0, err)
				if stop {
					return
				}
				if measure {
					mu.Lock()
					measured = append(measured, id)
					timelines += 1 + len(followers[author])
					mu.Unlock()
				}
			}
		})
	}
	reads := &schedule{start: start, rate: readRate}
	for w := range c.Readers {
		wg.Go(func() {
			r := newRand()
			for pctx.Err() == nil {
				t0 := time.Now()
				if readRate > 0 {
					var ok bool
					if t0, ok = reads.wait(pctx, to); !ok {
						return
					}
				}
				sent := time.Now()
				err := read(pctx, w, uint64(r.IntN(c.Users))+1)
				stop, measure := settle(t0, err)
				if stop {
					return
				}
				if measure {
					mu.Lock()
					readH.RecordDuration(time.Since(t0))
					sentH.RecordDuration(time.Since(sent))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	sched := schedNow().since(sched0, 0.5, 0.99, 0.999)
	// Wait for the measured posts to be delivered.
	deadline := time.Now().Add(time.Minute)
	h, missing, last := dl.of(measured)
	for missing > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // polling interval
		h, missing, last = dl.of(measured)
	}
	elapsed := max(last.Sub(from), c.Duration)
	res := phaseResult{
		postsPerSec: float64(len(measured)) / c.Duration.Seconds(),
		delivPerSec: float64(timelines) / elapsed.Seconds(),
		delivP50:    h.Quantile(0.50), delivP99: h.Quantile(0.99),
		readsPerSec: float64(readH.Count()) / c.Duration.Seconds(),
		readP50:     readH.Quantile(0.50), readP99: readH.Quantile(0.99),
		errors:      errs.Load(),
		undelivered: missing, postsMeasured: len(measured),
		schedP50: sched[0], schedP99: sched[1], schedP999: sched[2],
	}
	if readRate > 0 {
		res.sentP50, res.sentP99 = sentH.Quantile(0.50), sentH.Quantile(0.99)
	}
	if e := firstErr.Load(); e != nil {
		res.firstErr = e.(error).Error()
	}
	return res
}

// redisFanoutPhase drives Redis the way fanoutPhase drives Aviary: posts
// at the same rate are queued in memory (accepted at once) and fan-out
// workers push each to its author's and followers' lists in one pipeline;
// readers LRANGE 0 19 random timelines.
func redisFanoutPhase(ctx context.Context, c timelineConfig, followers map[uint64][]uint64, rd *redisTimelines) (phaseResult, error) {
	if err := rd.flush(ctx); err != nil {
		return phaseResult{}, err
	}
	var dl deliveries
	queue := make(chan queuedPost, 100000)
	wctx, stopWorkers := context.WithCancel(ctx)
	var workers sync.WaitGroup
	var werrs atomic.Uint64
	for range 16 {
		workers.Go(func() {
			for {
				select {
				case <-wctx.Done():
					return
				case p := <-queue:
					owners := append([]uint64{p.author}, followers[p.author]...)
					if err := rd.push(wctx, encodeEntry(p.id, p.author, 0), owners, c.Capacity); err != nil {
						werrs.Add(1)
						continue
					}
					dl.delivered(p.id, p.accepted)
				}
			}
		})
	}
	defer func() { stopWorkers(); workers.Wait() }()
	var ids atomic.Uint64
	res := fanoutPhase(ctx, c, 0, followers, &dl, func(ctx context.Context, _ int, author uint64) (uint64, error) {
		p := queuedPost{author, ids.Add(1), time.Now()}
		select {
		case queue <- p:
			return p.id, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}, func(ctx context.Context, _ int, owner uint64) error {
		_, err := rd.read(ctx, owner, 20)
		return err
	})
	res.errors += werrs.Load()
	return res, nil
}

// queuedPost is a post waiting in the Redis side's in-memory queue.
type queuedPost struct {
	author   uint64
	id       uint64
	accepted time.Time
}

// printer writes through the bench's printf, as the run goes.
type printer struct{ b *bench }

func (p printer) Write(s []byte) (int, error) {
	p.b.printf("%s", s)
	return len(s), nil
}
