package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/replication/natsx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// path relays one source. Its state is read by Status under mu; the rest
// belongs to the path's goroutine.
type path struct {
	r      *Relay
	src    Source
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	start  time.Time
	m      pathMetrics

	backoff  time.Duration         // before the next fetch after a failed apply
	wms      map[string]*watermark // by origin node
	repairs  map[string]repair     // by origin node: the last repair asked for
	lastInfo time.Time

	mu sync.Mutex
	st pathState
}

type pathState struct {
	nc                          *nats.Conn
	lastHeard, lastApplied      time.Time // local clock
	originAt                    time.Time // origin clock
	lagMessages                 uint64
	applied, skipped, conflicts uint64
	errors, gaps                uint64
	lastErr                     string
	lastErrAt                   time.Time
	origins                     map[string]*PathOrigin
}

// watermark is what the path puts in the source's watermark bucket for one
// origin node.
type watermark struct {
	want, put uint64
	putAt     time.Time
	// loaded: want includes what the bucket held when the path started.
	loaded bool
}

type repair struct {
	from uint64
	at   time.Time
}

func newPath(r *Relay, src Source, cancel context.CancelFunc) *path {
	p := &path{
		r:       r,
		src:     src,
		log:     r.log.With("source", src.Name),
		cancel:  cancel,
		done:    make(chan struct{}),
		start:   time.Now(),
		m:       r.metrics.path(src.Name),
		backoff: minBackoff,
		wms:     map[string]*watermark{},
		repairs: map[string]repair{},
	}
	p.st.origins = map[string]*PathOrigin{}
	return p
}

// run relays the source until ctx ends, starting a new session (connection
// and consumer) whenever one fails. It waits for after first, if not nil.
func (p *path) run(ctx context.Context, after <-chan struct{}) {
	defer close(p.done)
	if after != nil {
		select {
		case <-after:
		case <-ctx.Done():
			return
		}
	}
	backoff := minBackoff
	for {
		consumed, err := p.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if consumed {
			backoff = minBackoff
		}
		if err == nil {
			err = errors.New("session ended")
		}
		p.fail(err)
		p.log.Warn("relay path interrupted; reconnecting", "nats", p.src.NATSURL, "err", err, "in", backoff)
		if timex.Sleep(ctx, backoff) != nil {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session is one connection to the source's NATS and its consumer.
type session struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream string
	cons   jetstream.Consumer
	kvs    map[string]jetstream.KeyValue
}

// session connects to the source, waits for its stream, creates or
// updates the relay's consumer on it, and applies what it delivers until
// ctx ends (nil) or something fails. consumed reports whether it got as far
// as consuming.
func (p *path) session(ctx context.Context) (consumed bool, err error) {
	cfg := &p.r.cfg
	name := "aviary-relay-" + Token(cfg.LocalSite) + "-from-" + Token(p.src.Name)
	// The first failed attempt to connect of a session is an error of the
	// path, so that its status says why the source cannot be reached (a
	// refused certificate, say); the retries that follow are not counted.
	var reported atomic.Bool
	opts := []nats.Option{natsx.LogEvents(p.log), nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
		if err != nil && reported.CompareAndSwap(false, true) {
			p.fail(fmt.Errorf("connect to %s: %w", p.src.NATSURL, err))
		}
	})}
	opts = append(opts, natsx.Secure(cfg.TLS, p.src.NATSURL)...)
	nc, js, err := natsx.Connect(ctx, p.src.NATSURL, name, opts...)
	if err != nil {
		return false, err
	}
	s := &session{nc: nc, js: js, stream: StreamName(p.src.Name), kvs: map[string]jetstream.KeyValue{}}
	p.setConn(nc)
	defer func() {
		// Put the last watermarks, and make sure the acknowledgements and
		// naks sent reach the server before the connection closes.
		if nc.IsConnected() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), natsTimeout)
			p.flushWatermarks(fctx, s, true)
			cancel()
		}
		_ = nc.FlushTimeout(natsTimeout)
		p.setConn(nil)
		nc.Close()
	}()

	if err := p.waitStream(ctx, s); err != nil {
		return false, err
	}
	s.cons, err = js.CreateOrUpdateConsumer(ctx, s.stream, consumerConfig(cfg, p.src.Name))
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("consumer %s on stream %s: %w", ConsumerName(cfg.LocalSite), s.stream, err)
	}
	p.log.Info("relaying", "nats", p.src.NATSURL, "stream", s.stream, "consumer", ConsumerName(cfg.LocalSite))

	idle := false // the last fetch got nothing
	for ctx.Err() == nil {
		p.flushWatermarks(ctx, s, false)
		if nc.IsClosed() {
			return true, errors.New("nats connection closed")
		}
		if !nc.IsConnected() {
			// Reconnecting: a fetch now could be answered to a request
			// that no longer listens, leaving its messages unacknowledged
			// until AckWait.
			_ = timex.Sleep(ctx, cfg.MaxWait)
			continue
		}
		msgs, ferr := p.fetch(s.cons, idle)
		idle = len(msgs) == 0
		if len(msgs) > 0 {
			wait := p.process(ctx, s, msgs)
			p.flushWatermarks(ctx, s, false)
			if wait > 0 {
				_ = timex.Sleep(ctx, wait)
			}
		} else if ferr == nil {
			p.idle(ctx, s)
		}
		if ferr != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			return true, fmt.Errorf("fetch from stream %s: %w", s.stream, ferr)
		}
	}
	return true, nil
}

// consumerConfig is the durable consumer of the relay of cfg.LocalSite on
// the stream of source: from the stream's start, acknowledged one message
// at a time, with at most 4×Batch messages delivered and unacknowledged.
func consumerConfig(cfg *RelayConfig, source string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(cfg.LocalSite),
		Description:   fmt.Sprintf("Aviary relay: %s applies %s", cfg.LocalSite, source),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.ackWait,
		MaxDeliver:    -1,
		FilterSubject: SubjectAll(source),
		MaxAckPending: 4 * cfg.Batch,
	}
}

// waitStream waits until the source's stream exists: its nodes create it
// when they first publish.
func (p *path) waitStream(ctx context.Context, s *session) error {
	logged := false
	for {
		_, err := s.js.Stream(ctx, s.stream)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return fmt.Errorf("look up stream %s: %w", s.stream, err)
		}
		if !logged {
			p.log.Info("waiting for the source's stream; its nodes create it when they publish", "stream", s.stream, "nats", p.src.NATSURL)
			logged = true
		}
		if err := timex.Sleep(ctx, streamWait); err != nil {
			return err
		}
	}
}

// fetch returns the messages waiting, up to Batch; if none are (or the
// last fetch found none: idle), it waits up to MaxWait for one and takes
// what has come with it. A batch thus never waits to fill up: under load it
// is what came in during the last apply. Messages are returned along with
// an error that ended the fetch after them.
func (p *path) fetch(cons jetstream.Consumer, idle bool) ([]jetstream.Msg, error) {
	batch := p.r.cfg.Batch
	if !idle {
		msgs, err := collect(cons.FetchNoWait(batch))
		if len(msgs) > 0 || err != nil {
			return msgs, err
		}
	}
	msgs, err := collect(cons.Fetch(1, jetstream.FetchMaxWait(p.r.cfg.MaxWait)))
	if len(msgs) == 0 || err != nil || batch == 1 {
		return msgs, err
	}
	more, err := collect(cons.FetchNoWait(batch - 1))
	return append(msgs, more...), err
}

func collect(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, b.Error()
}

// idle refreshes the lag from the consumer's info, at most every
// infoEvery, when nothing was fetched.
func (p *path) idle(ctx context.Context, s *session) {
	if time.Since(p.lastInfo) < infoEvery {
		return
	}
	p.lastInfo = time.Now()
	ictx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	info, err := s.cons.Info(ictx)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.st.lagMessages = info.NumPending + uint64(max(info.NumAckPending, 0))
	p.mu.Unlock()
}

// item is a delivered message and what it decodes to.
type item struct {
	msg     jetstream.Msg
	rm      *pb.ReplicationMessage
	pending uint64 // the consumer's NumPending at its delivery
	index   int    // in delivery order
}

// group is the messages of one origin node in a fetched batch.
type group struct {
	site  uint32
	node  string
	items []item
}

// process applies a fetched batch, one ApplyRemote per origin node, and
// acknowledges what was applied. Messages of an origin node whose apply
// failed are handed back (Nak) at once, so that they are delivered again
// before anything newer of the same node, and process returns how long to
// wait before fetching again.
func (p *path) process(ctx context.Context, s *session, msgs []jetstream.Msg) time.Duration {
	now := time.Now()
	p.mu.Lock()
	p.st.lastHeard = now
	p.mu.Unlock()

	groups := p.decode(msgs)
	held := 0 // messages of the batch not acknowledged (nakked ones included)
	for _, g := range groups {
		held += len(g.items)
	}
	var wait time.Duration
	failed, nakked := false, 0
	for gi, g := range groups {
		if ctx.Err() != nil {
			// Stopping: hand the rest back for the next relay.
			for _, g := range groups[gi:] {
				nakAll(g.items)
			}
			return 0
		}
		req := &pb.ApplyRemoteRequest{OriginSite: g.site, OriginNode: g.node, Entries: make([]*pb.ReplicationMessage, len(g.items))}
		last := g.items[0]
		for i, it := range g.items {
			req.Entries[i] = it.rm
			if it.index > last.index {
				last = it
			}
		}
		req.Pending = last.pending
		req.SiteWatermark = p.siteWatermark(ctx, s, g.node)

		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
		start := time.Now()
		resp, err := p.r.cfg.Applier.ApplyRemote(actx, req)
		cancel()
		p.m.applySeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			for _, it := range g.items {
				if aerr := it.msg.Ack(); aerr != nil {
					p.log.Debug("ack failed; the message will be delivered again and skipped", "err", aerr)
				}
			}
			held -= len(g.items)
			p.applied(g, resp)
			continue
		}
		failed = true
		if isGap, w, ok := parseGap(err); isGap {
			if p.gap(ctx, s, g, err, w, ok, held) {
				// The origin publishes everything after w again, these
				// included: acknowledge them, so that the consumer
				// delivers the republished entries instead of these
				// again and again ahead of them.
				for _, it := range g.items {
					_ = it.msg.Ack()
				}
				held -= len(g.items)
			} else {
				nakAll(g.items)
				nakked += len(g.items)
			}
			wait = max(wait, gapRetry)
		} else {
			nakAll(g.items)
			nakked += len(g.items)
			p.fail(fmt.Errorf("apply %d messages of %s/%s: %w", len(g.items), p.src.Name, g.node, err))
			p.log.Warn("apply failed; retrying", "origin_node", g.node, "messages", len(g.items), "err", err, "in", p.backoff)
			wait = max(wait, p.backoff)
			p.backoff = min(2*p.backoff, maxBackoff)
		}
		// Nakked messages stay held: delivered and unacknowledged.
	}
	if !failed {
		p.backoff = minBackoff
	}
	// Behind the last message delivered: what the stream holds after it,
	// and what was handed back.
	var lag uint64
	if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
		lag = md.NumPending
	}
	p.mu.Lock()
	p.st.lagMessages = lag + uint64(nakked)
	p.mu.Unlock()
	return wait
}

// decode decodes msgs and groups them by origin node, in order of first
// appearance, each group in origin sequence order. A redelivered message
// can come after newer ones; per-node order is all that matters, since
// different nodes' writes commute. Undecodable messages are terminated:
// the gap they leave is found, and repaired, on the next entry.
func (p *path) decode(msgs []jetstream.Msg) []*group {
	var groups []*group
	byNode := map[string]*group{}
	for i, m := range msgs {
		rm := new(pb.ReplicationMessage)
		if err := proto.Unmarshal(m.Data(), rm); err != nil {
			err = fmt.Errorf("undecodable message on %s: %w", m.Subject(), err)
			p.fail(err)
			p.log.Error("dropping an undecodable message", "subject", m.Subject(), "err", err)
			_ = m.TermWithReason("undecodable ReplicationMessage")
			continue
		}
		it := item{msg: m, rm: rm, index: i}
		if md, err := m.Metadata(); err == nil {
			it.pending = md.NumPending
		}
		key := strconv.FormatUint(uint64(rm.OriginSite), 10) + "/" + rm.OriginNode
		g := byNode[key]
		if g == nil {
			g = &group{site: rm.OriginSite, node: rm.OriginNode}
			byNode[key] = g
			groups = append(groups, g)
		}
		g.items = append(g.items, it)
	}
	for _, g := range groups {
		slices.SortStableFunc(g.items, func(a, b item) int { return cmp.Compare(a.rm.Seq, b.rm.Seq) })
	}
	return groups
}

func nakAll(items []item) {
	for _, it := range items {
		_ = it.msg.Nak()
	}
}

// applied records a successful apply of g.
func (p *path) applied(g *group, resp *pb.ApplyRemoteResponse) {
	now := time.Now()
	var at int64
	for _, it := range g.items {
		at = max(at, it.rm.AtUnixMs)
	}
	originAt := time.UnixMilli(at)
	p.m.applied.Add(float64(resp.Applied))
	p.mu.Lock()
	st := &p.st
	st.lastApplied = now
	if originAt.After(st.originAt) {
		st.originAt = originAt
	}
	st.applied += uint64(resp.Applied)
	st.skipped += uint64(resp.Skipped)
	st.conflicts += uint64(resp.Conflicts)
	o := st.origin(g.node)
	o.Watermark = resp.Watermark
	if originAt.After(o.OriginAt) {
		o.OriginAt = originAt
	}
	o.Gap = ""
	p.mu.Unlock()

	w := p.wms[g.node]
	if w == nil {
		w = &watermark{}
		p.wms[g.node] = w
	}
	w.want = max(w.want, resp.Watermark)
	delete(p.repairs, g.node)
}

// siteWatermark is the highest sequence of origin node this site is known
// to have applied: what this relay was told, or, after a restart, what a
// relay of this site put in the source's watermark bucket. A node the
// relay fails over to adopts it instead of reporting a gap.
func (p *path) siteWatermark(ctx context.Context, s *session, node string) uint64 {
	w := p.wms[node]
	if w == nil {
		w = &watermark{}
		p.wms[node] = w
	}
	if !w.loaded {
		pctx, cancel := context.WithTimeout(ctx, natsTimeout)
		defer cancel()
		kv, err := p.bucket(pctx, s, WatermarkBucket)
		if err != nil {
			return w.want
		}
		e, err := kv.Get(pctx, WatermarkKey(p.src.Name, node, p.r.cfg.LocalSite))
		switch {
		case err == nil:
			if v, perr := strconv.ParseUint(string(e.Value()), 10, 64); perr == nil {
				w.want, w.put = max(w.want, v), max(w.put, v)
			}
			w.loaded = true
		case errors.Is(err, jetstream.ErrKeyNotFound):
			w.loaded = true
		}
	}
	return w.want
}

func (st *pathState) origin(node string) *PathOrigin {
	o := st.origins[node]
	if o == nil {
		o = &PathOrigin{Node: node}
		st.origins[node] = o
	}
	return o
}

// gap handles a gap that the local site found in g: entries of the origin
// node are missing after its watermark w. If messages delivered before are
// still unacknowledged (a relay stopped without handing them back), they
// will be delivered again after AckWait and may fill it; otherwise the
// path asks the origin node, through the source's republish bucket, to
// publish again after w. It reports whether a repair is asked for (now or
// before): the group's messages are then covered by the republish.
func (p *path) gap(ctx context.Context, s *session, g *group, gerr error, w uint64, ok bool, held int) bool {
	if ctx.Err() != nil {
		return false // stopping; the next relay finds the gap again
	}
	if waiting, n := p.redeliveryPending(ctx, s, held); waiting {
		p.log.Info("entries are missing; waiting for messages delivered earlier and not acknowledged, which come again after the ack wait",
			"origin_node", g.node, "unacknowledged", n, "ack_wait", p.r.cfg.ackWait, "gap", gerr)
		return false
	}
	p.mu.Lock()
	p.st.origin(g.node).Gap = gerr.Error()
	p.mu.Unlock()
	if !ok {
		p.fail(fmt.Errorf("a gap without a watermark, cannot ask for a repair: %w", gerr))
		p.log.Error("gap in the source's entries; its message names no watermark, so no repair is asked for", "origin_node", g.node, "err", gerr)
		return false
	}
	last, asked := p.repairs[g.node]
	if asked && last.from == w && time.Since(last.at) < republishEvery {
		return true // asked already; waiting for the origin
	}
	if !asked || last.from != w {
		p.mu.Lock()
		p.st.gaps++
		p.mu.Unlock()
		p.m.gaps.Inc()
	}
	key := RepublishKey(p.src.Name, g.node, p.r.cfg.LocalSite)
	p.log.Warn("gap in the source's entries: asking the origin node to publish again after the local watermark",
		"origin_node", g.node, "watermark", w, "bucket", RepublishBucket, "key", key, "gap", gerr)
	p.repairs[g.node] = repair{from: w, at: time.Now()}
	pctx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	kv, err := p.bucket(pctx, s, RepublishBucket)
	if err == nil {
		_, err = kv.Put(pctx, key, []byte(strconv.FormatUint(w, 10)))
	}
	if err != nil {
		delete(p.repairs, g.node) // ask again on the next gap
		p.fail(fmt.Errorf("ask %s/%s for a repair: %w", p.src.Name, g.node, err))
		p.log.Error("cannot ask for a repair", "origin_node", g.node, "err", err)
		return false
	}
	return true
}

// redeliveryPending reports whether the consumer has more messages
// delivered and unacknowledged than the held ones of the current batch.
func (p *path) redeliveryPending(ctx context.Context, s *session, held int) (bool, int) {
	// Let the server see the acknowledgements sent so far first.
	_ = s.nc.FlushTimeout(natsTimeout)
	ictx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	info, err := s.cons.Info(ictx)
	if err != nil {
		return false, 0
	}
	return info.NumAckPending > held, info.NumAckPending - held
}

// bucket returns the source's key-value bucket name, creating it if needed.
func (p *path) bucket(ctx context.Context, s *session, name string) (jetstream.KeyValue, error) {
	if kv := s.kvs[name]; kv != nil {
		return kv, nil
	}
	kv, err := natsx.EnsureKV(ctx, s.js, name)
	if err != nil {
		return nil, err
	}
	s.kvs[name] = kv
	return kv, nil
}

// flushWatermarks puts the watermarks that changed in the source's bucket,
// each key at most every watermarkEvery unless force.
func (p *path) flushWatermarks(ctx context.Context, s *session, force bool) {
	now := time.Now()
	for node, w := range p.wms {
		if w.want == w.put || (!force && now.Sub(w.putAt) < watermarkEvery) {
			continue
		}
		w.putAt = now
		key := WatermarkKey(p.src.Name, node, p.r.cfg.LocalSite)
		pctx, cancel := context.WithTimeout(ctx, natsTimeout)
		kv, err := p.bucket(pctx, s, WatermarkBucket)
		if err == nil {
			_, err = kv.Put(pctx, key, []byte(strconv.FormatUint(w.want, 10)))
		}
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				p.fail(fmt.Errorf("put watermark %s: %w", key, err))
				p.log.Warn("cannot put a watermark; will retry", "key", key, "watermark", w.want, "err", err)
			}
			continue
		}
		w.put = w.want
	}
}

// fail records an error of the path.
func (p *path) fail(err error) {
	p.m.errors.Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.errors++
	p.st.lastErr = err.Error()
	p.st.lastErrAt = time.Now()
}

func (p *path) setConn(nc *nats.Conn) {
	p.mu.Lock()
	p.st.nc = nc
	p.mu.Unlock()
}

// status reports the path at now.
func (p *path) status(now time.Time) PathStatus {
	stall := p.r.cfg.StallAfter
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.st
	out := PathStatus{
		Source:      p.src.Name,
		SourceID:    p.src.ID,
		NATSURL:     p.src.NATSURL,
		Connected:   st.nc != nil && st.nc.IsConnected(),
		LagMessages: st.lagMessages,
		LastHeard:   st.lastHeard,
		Applied:     st.applied,
		Skipped:     st.skipped,
		Conflicts:   st.conflicts,
		Errors:      st.errors,
		Gaps:        st.gaps,
		LastError:   st.lastErr,
		LastErrorAt: st.lastErrAt,
	}
	fresh := st.lastApplied
	if fresh.IsZero() {
		fresh = p.start
	}
	origin := st.originAt
	if origin.IsZero() {
		origin = p.start
	}
	lag := max(now.Sub(origin), 0)
	if silent := now.Sub(fresh); silent > stall {
		out.Stalled = true
		// Never less than the silence, whatever the origin's clock says.
		lag = max(lag, silent)
	}
	out.LagSeconds = lag.Seconds()
	for _, node := range slices.Sorted(maps.Keys(st.origins)) {
		out.Origins = append(out.Origins, *st.origins[node])
	}
	return out
}
