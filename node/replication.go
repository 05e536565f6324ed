package node

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/replication"
	"github.com/aviarydb/aviary/replication/natsx"
	"github.com/aviarydb/aviary/shard"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Cross-site replication, the node's side. The router keeps every
// locally-originated write in the store's outbox; the publisher sends the
// outbox to the site's replication stream (one subject per node), with a
// heartbeat every second, and trims it once every other site's relay has
// reported a watermark past an entry. Local writes never wait on NATS: while
// it is away the outbox grows, durably, and flows when it returns.
// Replica.ApplyRemote applies what relays bring from the other sites.

// NATSOff as Config.NATSURL disables replication.
const NATSOff = "off"

const (
	publishedKey   = "outbox/published"
	publishBatch   = 500
	maxConflicts   = 1000
	publishTimeout = 10 * time.Second
)

// originKey names a replication path's origin: a node of another site.
type originKey struct {
	site uint32
	node string
}

func watermarkKey(o originKey) string { return fmt.Sprintf("wm/%d/%s", o.site, o.node) }

// originState is what this node knows of one path.
type originState struct {
	mu        sync.Mutex // serialises ApplyRemote for the path
	watermark uint64
	loaded    bool
	st        pb.OriginStatus
}

// replicator holds the node's replication state.
type replicator struct {
	n      *Node
	server *natsx.Server // the embedded NATS server, if any

	// conn is the publisher's connection, while it has one.
	conn      atomic.Pointer[nats.Conn]
	published atomic.Uint64

	mu struct {
		sync.Mutex
		url       string
		origins   map[originKey]*originState
		conflicts []*pb.Conflict // ring, oldest first
		siteWM    map[string]uint64
	}
}

// enabled reports whether the node replicates.
func (n *Node) replicating() bool { return n.cfg.NATSURL != NATSOff }

// startNATS starts the embedded server when this node founds a site and
// no external NATS is configured.
func (n *Node) startNATS() error {
	r := &replicator{n: n}
	r.mu.origins = map[originKey]*originState{}
	n.repl = r
	if !n.replicating() {
		return nil
	}
	if n.cfg.NATSURL != "" {
		r.mu.url = n.cfg.NATSURL
		return nil
	}
	if n.cfg.Join != "" {
		return nil // the site's NATS, from its map
	}
	host, port, err := splitHostPort(n.cfg.NATSAddr)
	if err != nil {
		return fmt.Errorf("node: nats address %q: %w", n.cfg.NATSAddr, err)
	}
	srv, err := natsx.StartServer(natsx.ServerConfig{
		Dir: n.cfg.DataDir + "/nats", Host: host, Port: port, ServerName: "aviary-" + replication.Token(n.cfg.SiteName) + "-" + replication.Token(n.cfg.NodeID),
		MaxStoreBytes: n.cfg.ReplicationMaxBytes * 2, Logger: n.log.With("component", "nats"),
		// An outbox entry is one write batch, up to MaxBatchBytes, plus
		// its envelope: the default 1 MiB would refuse a large one.
		MaxPayload: int32(min(2*n.cfg.Limits.MaxBatchBytes+(1<<20), 64<<20)),
		TLS:        n.natsServerTLS(),
		ClientAuth: n.natsClientAuth(),
	})
	if err != nil {
		return fmt.Errorf("node: embedded nats: %w", err)
	}
	r.server = srv
	r.mu.url = srv.ClientURL()
	n.log.Info("embedded nats serving", "url", r.mu.url)
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, errors.New("want host:port")
	}
	p, err := strconv.Atoi(addr[i+1:])
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q", addr[i+1:])
	}
	return addr[:i], p, nil
}

// connected reports whether the publisher reaches the site's NATS now.
func (r *replicator) connected() bool {
	nc := r.conn.Load()
	return nc != nil && nc.IsConnected()
}

// stopNATS shuts the embedded server down, once.
func (n *Node) stopNATS() {
	if r := n.repl; r != nil && r.server != nil {
		r.server.Shutdown()
		r.server = nil
	}
}

// run publishes until ctx ends, when replication is on.
func (r *replicator) run(ctx context.Context) {
	if r.n.replicating() {
		r.publish(ctx)
	}
}

// url returns the NATS URL of this node's site: configured, embedded, or
// the site map's.
func (r *replicator) url() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.url != "" {
		return r.mu.url
	}
	if s, ok := r.n.routedMap().Sites[r.n.cfg.SiteName]; ok {
		return s.NATSURL
	}
	return ""
}

// publish runs the publisher until ctx ends, reconnecting as needed.
func (r *replicator) publish(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		url := r.url()
		if url == "" {
			_ = timex.Sleep(ctx, time.Second)
			continue
		}
		err := r.session(ctx, url)
		r.conn.Store(nil)
		if ctx.Err() != nil {
			return
		}
		r.n.log.Warn("replication publisher interrupted; retrying", "nats", url, "err", err, "in", backoff)
		_ = timex.Sleep(ctx, backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

// session publishes over one connection until it fails.
func (r *replicator) session(ctx context.Context, url string) error {
	n := r.n
	nc, js, err := natsx.Connect(ctx, url, "aviary-node-"+n.cfg.NodeID, natsx.Secure(n.cfg.TLS, url)...)
	if err != nil {
		return err
	}
	defer nc.Close()
	site, node := n.cfg.SiteName, n.cfg.NodeID
	if _, err := natsx.EnsureStream(ctx, js, natsx.StreamConfig{
		Name: replication.StreamName(site), Subjects: []string{replication.SubjectAll(site)},
		MaxAge: n.cfg.ReplicationMaxAge, MaxBytes: n.cfg.ReplicationMaxBytes, Replicas: 1,
	}); err != nil {
		return err
	}
	wm, err := natsx.EnsureKV(ctx, js, replication.WatermarkBucket)
	if err != nil {
		return err
	}
	rp, err := natsx.EnsureKV(ctx, js, replication.RepublishBucket)
	if err != nil {
		return err
	}
	r.conn.Store(nc)
	n.log.Info("replication publisher connected", "nats", url, "stream", replication.StreamName(site))

	pos, err := r.loadPublished()
	if err != nil {
		return err
	}
	subject := replication.Subject(site, node)
	prev := pos
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	lastBeat, lastTrim := time.Time{}, time.Time{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if !nc.IsConnected() {
			return errors.New("nats connection lost")
		}
		// Repairs asked for by relays that found a gap: publish again
		// after their watermark (the outbox still holds those entries).
		// Looked for once a second, with the trim: listing the bucket is a
		// round trip to NATS.
		now := time.Now()
		if now.Sub(lastTrim) >= time.Second {
			if from, ok := r.republishRequest(ctx, rp); ok && from < pos {
				pos, prev = r.republishFrom(from, pos)
			}
		}
		for {
			entries, err := n.store.OutboxEntries(pos, publishBatch)
			if err != nil {
				return err
			}
			if len(entries) == 0 {
				break
			}
			last, err := r.publishEntries(ctx, js, subject, entries, prev)
			if err != nil {
				return err
			}
			pos, prev = last, last
			if err := r.savePublished(ctx, pos); err != nil {
				return err
			}
			if len(entries) < publishBatch {
				break
			}
		}
		r.published.Store(pos)
		if now.Sub(lastBeat) >= n.cfg.HeartbeatInterval {
			hb := &pb.ReplicationMessage{OriginSite: n.cfg.SiteID, OriginNode: node, Seq: pos, PrevSeq: pos, AtUnixMs: n.cfg.Clock.Now().UnixMilli(), Heartbeat: true}
			b, _ := proto.Marshal(hb)
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			_, err := js.Publish(pctx, subject, b)
			cancel()
			if err != nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
			lastBeat = now
		}
		if now.Sub(lastTrim) >= time.Second {
			r.trim(ctx, wm, pos)
			lastTrim = now
		}
	}
}

// republishFrom returns where to publish from again for a relay that has
// applied up to from. Entries up to the outbox floor are trimmed: the chain
// says so (the first entry sent names the floor as its previous), so the
// relay keeps reporting the gap rather than skip them.
func (r *replicator) republishFrom(from, pos uint64) (next, prev uint64) {
	n := r.n
	floor := n.store.OutboxFloor()
	if floor > from {
		n.log.Error("a relay asked for outbox entries that are trimmed already; they cannot be sent again: repair that site's data",
			"after", from, "trimmed_up_to", floor)
	} else {
		n.log.Warn("republishing outbox entries for a relay that found a gap", "after", from, "was_at", pos)
	}
	return max(from, floor), max(from, floor)
}

// publishEntries publishes outbox entries in order and waits for every
// acknowledgement; it returns the last sequence published.
func (r *replicator) publishEntries(ctx context.Context, js jetstream.JetStream, subject string, entries []shard.OutboxEntry, prev uint64) (uint64, error) {
	n := r.n
	futures := make([]jetstream.PubAckFuture, 0, len(entries))
	for _, e := range entries {
		var je pb.JournalEntry
		if err := proto.Unmarshal(e.Data, &je); err != nil {
			return 0, fmt.Errorf("outbox entry %d: %w", e.Seq, err)
		}
		msg := &pb.ReplicationMessage{OriginSite: n.cfg.SiteID, OriginNode: n.cfg.NodeID, Seq: e.Seq, PrevSeq: prev, AtUnixMs: je.AtUnixMs, Mutations: je.Mutations}
		b, err := proto.Marshal(msg)
		if err != nil {
			return 0, err
		}
		f, err := js.PublishAsync(subject, b)
		if err != nil {
			return 0, fmt.Errorf("publish entry %d: %w", e.Seq, err)
		}
		futures = append(futures, f)
		prev = e.Seq
	}
	timeout := time.NewTimer(publishTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return 0, fmt.Errorf("publish entry %d: %w", entries[i].Seq, err)
		case <-timeout.C:
			return 0, fmt.Errorf("publish entry %d: no acknowledgement within %s", entries[i].Seq, publishTimeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return prev, nil
}

func (r *replicator) loadPublished() (uint64, error) {
	b, ok, err := r.n.store.ImportState(publishedKey)
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// savePublished records the publish position (not synced: after a crash
// the entries after an older position are published again, and relays
// skip what they applied).
func (r *replicator) savePublished(ctx context.Context, pos uint64) error {
	_, err := r.n.store.ImportPage(ctx, nil, publishedKey, binary.BigEndian.AppendUint64(nil, pos))
	return err
}

// republishRequest returns the lowest watermark a relay asked to be
// published after, and clears the requests.
func (r *replicator) republishRequest(ctx context.Context, kv jetstream.KeyValue) (uint64, bool) {
	n := r.n
	prefix := replication.Token(n.cfg.SiteName) + "." + replication.Token(n.cfg.NodeID) + "."
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return 0, false
	}
	from, found := uint64(math.MaxUint64), false
	for k := range keys.Keys() {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		if v, err := strconv.ParseUint(string(e.Value()), 10, 64); err == nil {
			from, found = min(from, v), true
		}
		_ = kv.Delete(ctx, k)
	}
	return from, found
}

// trim drops outbox entries every other site has applied (and that are
// published), by the watermarks their relays put in the site's bucket.
func (r *replicator) trim(ctx context.Context, kv jetstream.KeyValue, published uint64) {
	n := r.n
	m := n.routedMap()
	upTo := published
	wms := map[string]uint64{}
	for name := range m.Sites {
		if name == n.cfg.SiteName {
			continue
		}
		var w uint64
		if e, err := kv.Get(ctx, replication.WatermarkKey(n.cfg.SiteName, n.cfg.NodeID, name)); err == nil {
			w, _ = strconv.ParseUint(string(e.Value()), 10, 64)
		}
		wms[name] = w
		upTo = min(upTo, w)
	}
	r.mu.Lock()
	r.mu.siteWM = wms
	r.mu.Unlock()
	if upTo == 0 {
		return
	}
	if _, err := n.store.TrimOutbox(upTo); err != nil && !errors.Is(err, shard.ErrClosed) {
		n.log.Error("cannot trim the outbox", "up_to", upTo, "err", err)
	}
}

// origin returns the state of a path, loading its watermark once.
func (r *replicator) origin(o originKey) (*originState, error) {
	r.mu.Lock()
	s, ok := r.mu.origins[o]
	if !ok {
		s = &originState{st: pb.OriginStatus{OriginSite: o.site, OriginNode: o.node}}
		r.mu.origins[o] = s
	}
	r.mu.Unlock()
	return s, nil
}

func (r *replicator) loadWatermark(s *originState, o originKey) error {
	if s.loaded {
		return nil
	}
	b, ok, err := r.n.store.ImportState(watermarkKey(o))
	if err != nil {
		return err
	}
	if ok && len(b) == 8 {
		s.watermark = binary.BigEndian.Uint64(b)
	}
	s.loaded = true
	return nil
}

func (r *replicator) addConflict(c *pb.Conflict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.mu.conflicts) == maxConflicts {
		r.mu.conflicts = slices.Delete(r.mu.conflicts, 0, 1)
	}
	r.mu.conflicts = append(r.mu.conflicts, c)
}

// gapError is how ApplyRemote reports missing entries; relays parse it.
func gapError(o originKey, site string, wm, seq, prev uint64) error {
	return status.Errorf(codes.FailedPrecondition, "gap: origin %s/%s applied up to %d, next entry %d follows %d", site, o.node, wm, seq, prev)
}

func (s *replicaServer) ApplyRemote(ctx context.Context, req *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error) {
	n := s.n
	if !n.ready.Load() {
		return nil, status.Error(codes.Unavailable, "node is not ready: it is not part of its site's shard map yet")
	}
	if req.OriginSite > ids.MaxSite {
		return nil, invalidf("origin_site %d: must be in [0, %d]", req.OriginSite, ids.MaxSite)
	}
	if req.OriginSite == n.cfg.SiteID {
		return nil, invalidf("origin_site %d is this site's own: a site never applies its own writes again", req.OriginSite)
	}
	if err := gizzard.ValidName(req.OriginNode); err != nil {
		return nil, invalidf("origin_node: %v", err)
	}
	o := originKey{req.OriginSite, req.OriginNode}
	siteName := fmt.Sprint(req.OriginSite)
	if st, ok := n.routedMap().SiteByID(req.OriginSite); ok {
		siteName = st.Name
	}
	os, _ := n.repl.origin(o)
	os.mu.Lock()
	defer os.mu.Unlock()
	if err := n.repl.loadWatermark(os, o); err != nil {
		return nil, toStatus(err)
	}
	// Another node of this site applied up to here (the relay failed over
	// from it): what it applied is in its journal, on its way to the
	// replicas.
	os.watermark = max(os.watermark, req.SiteWatermark)
	resp := &pb.ApplyRemoteResponse{}
	now := time.Now().UnixMilli()
	var chunk []shard.Mutation
	var chunkSeq uint64
	chunkBytes := 0
	var chunkAt int64
	flush := func() error {
		if len(chunk) == 0 {
			// Entries without mutations (origins publish none; a foreign
			// message may be one) apply nothing: the path moves past them
			// (a redelivery after a restart is again a no-op).
			os.watermark = max(os.watermark, chunkSeq)
			return nil
		}
		state := map[string][]byte{watermarkKey(o): binary.BigEndian.AppendUint64(nil, chunkSeq)}
		res, err := n.router.WriteRemote(ctx, chunk, router.DefaultConsistency, router.Origin{Site: o.site, Node: o.node, Seq: chunkSeq}, state)
		if err != nil {
			return toStatus(err)
		}
		for i, rr := range res {
			if rr.Outcome != shard.Superseded {
				continue
			}
			m := &chunk[i]
			c := &pb.Conflict{Table: m.Table, Key: m.Key, Owner: m.Owner, Id: m.ID, Loser: pbVersion(m.Version), OriginSite: o.site, AtUnixMs: now}
			n.repl.addConflict(c)
			resp.Conflicts++
			os.st.Conflicts++
		}
		os.watermark = chunkSeq
		os.st.AppliedAtUnixMs = chunkAt
		chunk, chunkBytes = chunk[:0], 0
		return nil
	}
	for _, e := range req.Entries {
		if e.Heartbeat {
			os.st.HeartbeatAtUnixMs = max(os.st.HeartbeatAtUnixMs, e.AtUnixMs)
			os.st.PublishedSeq = max(os.st.PublishedSeq, e.Seq)
			continue
		}
		// What is applied, or will be with the chunk.
		expect := max(os.watermark, chunkSeq)
		if e.Seq <= expect {
			resp.Skipped++
			continue
		}
		if e.PrevSeq > expect && !req.AllowGap {
			if err := flush(); err != nil {
				return nil, err
			}
			os.st.Gap = fmt.Sprintf("applied up to %d, entry %d follows %d", os.watermark, e.Seq, e.PrevSeq)
			return nil, gapError(o, siteName, os.watermark, e.Seq, e.PrevSeq)
		}
		size := 0
		for _, p := range e.Mutations {
			size += proto.Size(p)
		}
		if len(chunk)+len(e.Mutations) > n.cfg.Limits.MaxBatchMutations || chunkBytes+size > n.cfg.Limits.MaxBatchBytes/2 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		chunkBytes += size
		for i, p := range e.Mutations {
			var m shard.Mutation
			if err := router.FromProto(p, &m); err != nil {
				return nil, invalidf("entry %d mutation %d: %v", e.Seq, i, err)
			}
			m.Shard = ""
			if m.Version.IsZero() {
				return nil, invalidf("entry %d mutation %d: a replicated mutation carries its version", e.Seq, i)
			}
			if _, err := n.hlc.Update(m.Version.HLC); err != nil {
				// The origin's clock is ahead of ours by more than the
				// bound: the relay retries until it no longer is.
				return nil, status.Errorf(codes.Unavailable, "entry %d mutation %d: %v", e.Seq, i, err)
			}
			chunk = append(chunk, m)
		}
		chunkSeq, chunkAt = e.Seq, e.AtUnixMs
		resp.Applied++
		os.st.AppliedEntries++
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if resp.Applied > 0 {
		os.st.Gap = "" // entries follow again
	}
	os.st.Watermark = os.watermark
	os.st.OriginSiteName = siteName
	os.st.HeardUnixMs = now
	os.st.Pending = req.Pending
	resp.Watermark = os.watermark
	return resp, nil
}

func (s *replicaServer) ReplicationStatus(ctx context.Context, req *pb.ReplicationStatusRequest) (*pb.ReplicationStatusResponse, error) {
	r := s.n.repl
	limit := int(req.Conflicts)
	if limit <= 0 {
		limit = 100
	}
	resp := &pb.ReplicationStatusResponse{
		PublishedSeq: r.published.Load(), NatsConnected: r.connected(), NatsUrl: r.url(),
		SiteWatermarks: map[string]uint64{},
	}
	if c, oldest, newest, err := s.n.store.OutboxStats(); err == nil {
		resp.OutboxEntries, resp.OutboxOldestSeq, resp.OutboxNewestSeq = uint64(c), oldest, newest
	}
	r.mu.Lock()
	keys := make([]originKey, 0, len(r.mu.origins))
	for k := range r.mu.origins {
		keys = append(keys, k)
	}
	for name, w := range r.mu.siteWM {
		resp.SiteWatermarks[name] = w
	}
	for i := len(r.mu.conflicts) - 1; i >= 0 && len(resp.Conflicts) < limit; i-- {
		resp.Conflicts = append(resp.Conflicts, r.mu.conflicts[i])
	}
	origins := make([]*originState, len(keys))
	slices.SortFunc(keys, func(a, b originKey) int {
		if a.site != b.site {
			return int(a.site) - int(b.site)
		}
		return strings.Compare(a.node, b.node)
	})
	for i, k := range keys {
		origins[i] = r.mu.origins[k]
	}
	r.mu.Unlock()
	for _, os := range origins {
		os.mu.Lock()
		st := proto.Clone(&os.st).(*pb.OriginStatus)
		os.mu.Unlock()
		resp.Origins = append(resp.Origins, st)
	}
	return resp, nil
}

// tombstoneHorizon bounds tombstone collection by replication: a
// tombstone may go only once every other site has applied it (the
// outbox's oldest entry is after it) and every other site's writes up to
// it have arrived here (the paths' applied-through times are past it).
// With another site that this node has not heard from, nothing goes.
func (n *Node) tombstoneHorizon(h ids.Timestamp) ids.Timestamp {
	if !n.replicating() {
		return h
	}
	m := n.routedMap()
	if len(m.Sites) <= 1 {
		return h // no other site to wait for
	}
	if es, err := n.store.OutboxEntries(0, 1); err == nil && len(es) > 0 {
		var je pb.JournalEntry
		if proto.Unmarshal(es[0].Data, &je) == nil {
			h = min(h, ids.MakeTimestamp(je.AtUnixMs, 0))
		}
	}
	r := n.repl
	r.mu.Lock()
	origins := maps.Clone(r.mu.origins)
	r.mu.Unlock()
	for _, site := range m.Sites {
		if site.Name == n.cfg.SiteName {
			continue
		}
		heard := false
		for k, os := range origins {
			if k.site != site.ID {
				continue
			}
			heard = true
			os.mu.Lock()
			through := os.st.AppliedAtUnixMs
			if os.watermark >= os.st.PublishedSeq {
				through = max(through, os.st.HeartbeatAtUnixMs)
			}
			os.mu.Unlock()
			h = min(h, ids.MakeTimestamp(through, 0))
		}
		if !heard {
			return 0
		}
	}
	return h
}

// natsServerTLS is the embedded nats-server's TLS: its clients are the
// site's nodes and the relays (nil: plaintext).
func (n *Node) natsServerTLS() *tls.Config {
	if !n.sec.Enabled() {
		return nil
	}
	return n.cfg.TLS.ServerConfig(tls.RequireAndVerifyClientCert, tlsx.Expect{Roles: []tlsx.Role{tlsx.RoleNode, tlsx.RoleRelay}})
}

// natsClientAuth decides the embedded nats-server's clients with TLS: the
// site's nodes may do anything, another site's relay only what reading
// this site's stream takes (replication.RelayPermissions).
func (n *Node) natsClientAuth() func(*tls.ConnectionState) (string, *natsx.Permissions, error) {
	if !n.sec.Enabled() {
		return nil
	}
	site := n.cfg.SiteName
	return func(cs *tls.ConnectionState) (string, *natsx.Permissions, error) {
		if cs == nil {
			return "", nil, errors.New("not a TLS connection")
		}
		id, ok := tlsx.StateIdentity(*cs)
		switch {
		case !ok:
			return "", nil, errors.New("no verified client certificate")
		case id.Role == tlsx.RoleNode && id.Site == site:
			return id.String(), nil, nil
		case id.Role == tlsx.RoleRelay && id.Site != site:
			pub, sub := replication.RelayPermissions(site, id.Site)
			return id.String(), &natsx.Permissions{Publish: pub, Subscribe: sub}, nil
		}
		return "", nil, fmt.Errorf("%s may not connect to site %s's NATS (nodes of the site and other sites' relays may)", id, site)
	}
}
