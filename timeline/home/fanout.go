package home

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// QueueOwner is the index owner, in table fanout, of a site's fan-out
// queue partition p.
func QueueOwner(site uint32, p int) uint64 { return 1<<63 | uint64(site)<<32 | uint64(p) }

// partition places a status on a queue partition.
func (s *Service) partition(statusID uint64) int {
	h := statusID * 0x9E3779B97F4A7C15
	return int((h >> 32) % uint64(s.cfg.FanoutPartitions))
}

// A queue entry's payload: author id, flags, accepted at (Unix ns).
const queuePayloadSize = 20

type post struct {
	id       uint64
	author   uint64
	flags    uint32
	accepted time.Time
}

func (p post) payload() []byte {
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, queuePayloadSize), p.author)
	b = binary.LittleEndian.AppendUint32(b, p.flags)
	return binary.LittleEndian.AppendUint64(b, uint64(p.accepted.UnixNano()))
}

func decodePost(e *pb.Entry) (post, error) {
	if len(e.Payload) != queuePayloadSize {
		return post{}, fmt.Errorf("queue entry %d: payload is %d bytes, want %d", e.Id, len(e.Payload), queuePayloadSize)
	}
	return post{
		id:       e.Id,
		author:   binary.LittleEndian.Uint64(e.Payload),
		flags:    binary.LittleEndian.Uint32(e.Payload[8:]),
		accepted: time.Unix(0, int64(binary.LittleEndian.Uint64(e.Payload[12:]))),
	}, nil
}

func (p post) entry() *pb.TimelineEntry {
	return &pb.TimelineEntry{StatusId: p.id, AuthorId: p.author, Flags: p.flags}
}

// Post records a status and queues its fan-out to every site.
func (s *Service) Post(ctx context.Context, r *pb.PostRequest) (*pb.PostResponse, error) {
	if r.AuthorId == 0 {
		return nil, status.Error(codes.InvalidArgument, "author_id is zero (unset)")
	}
	p := post{id: r.StatusId, author: r.AuthorId, flags: r.Flags, accepted: time.Now()}
	if p.id == 0 {
		id, err := s.cfg.NewID()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "assigning a status id: %v", err)
		}
		p.id = id
	}
	v, _ := s.current()
	if len(v.sites) == 0 {
		return nil, status.Error(codes.Unavailable, "the node has not applied its site's shard map yet: no fan-out queue to post to")
	}
	part := s.partition(p.id)
	muts := []*pb.Mutation{{Table: TablePosts, Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{
		Owner: p.author, Id: p.id, Payload: binary.LittleEndian.AppendUint32(nil, p.flags)}}}}
	for _, site := range v.sites {
		muts = append(muts, &pb.Mutation{Table: TableFanout, Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{
			Owner: QueueOwner(site, part), Id: p.id, Payload: p.payload()}}})
	}
	if _, err := s.cfg.Data.Write(ctx, &pb.WriteRequest{Mutations: muts}); err != nil {
		return nil, err
	}
	s.metrics.posts.Inc()
	select {
	case s.wake[part] <- struct{}{}:
	default:
	}
	return &pb.PostResponse{StatusId: p.id}, nil
}

// pushResult is what one node answered to a ReplicaPush.
type pushResult struct {
	err     error
	missing map[uint64]bool
	added   uint32
	// sent is the deliveries sent to the node: the (entry, owner) pairs of
	// the timelines it is a replica of.
	sent int
}

// pushOwners pushes each entry to its owners' replicas, one ReplicaPush per
// node, and schedules a repair of each replica that lacked a timeline a
// sibling holds. It returns per node what happened, and the owners no
// replica took (every one of theirs failed).
func (s *Service) pushOwners(ctx context.Context, v *view, entries []*pb.TimelineEntry, owners [][]uint64) (map[string]*pushResult, []uint64) {
	reqs := map[string]*pb.ReplicaPushRequest{}
	placed := map[uint64][timeline.NumReplicas]string{} // each owner's replicas, looked up once
	for i, e := range entries {
		byNode := map[string]*pb.Delivery{}
		for _, o := range owners[i] {
			reps, ok := placed[o]
			if !ok {
				reps = v.replicas(o)
				placed[o] = reps
			}
			for _, n := range reps {
				if n == "" {
					continue
				}
				d := byNode[n]
				if d == nil {
					d = &pb.Delivery{Entry: e}
					byNode[n] = d
					if reqs[n] == nil {
						reqs[n] = &pb.ReplicaPushRequest{}
					}
					reqs[n].Deliveries = append(reqs[n].Deliveries, d)
				}
				d.Owners = append(d.Owners, o)
			}
		}
	}
	results := map[string]*pushResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for n, req := range reqs {
		res := &pushResult{missing: map[uint64]bool{}}
		for _, d := range req.Deliveries {
			res.sent += len(d.Owners)
		}
		results[n] = res
		var probe bool
		if n != s.cfg.NodeID {
			var skip bool
			if skip, probe = s.skipPush(n); skip {
				// Its replicas are repaired from their siblings, below.
				res.err = fmt.Errorf("home: node %s did not answer a push less than %v ago", n, downFor)
				s.metrics.pushesSkipped.Inc()
				continue
			}
		}
		wg.Go(func() {
			err := s.replicaCall(ctx, v, n, func(c pb.TimelinesClient) error {
				for _, req := range chunkPush(req, maxPushOwners) {
					pctx, cancel := context.WithTimeout(ctx, s.cfg.ReplicaTimeout)
					resp, err := c.ReplicaPush(pctx, req)
					cancel()
					if err != nil {
						return err
					}
					mu.Lock()
					res.added += resp.Added
					for _, o := range resp.Missing {
						res.missing[o] = true
					}
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				if ctx.Err() == nil { // not given up by the caller
					s.pushFailed(n, probe)
				} else if probe {
					s.probeAbandoned(n)
				}
				res.err = err
				return
			}
			s.markUp(n)
		})
	}
	wg.Wait()
	var lost []uint64
	for o, reps := range placed {
		took, holds := false, false
		var repairs []string // replicas that lack the timeline or failed
		for _, n := range reps {
			switch r := results[n]; {
			case r == nil: // an empty slot
			case r.err != nil:
				repairs = append(repairs, n) // retried until it is back
			case r.missing[o]:
				took = true
				repairs = append(repairs, n)
			default:
				took, holds = true, true
			}
		}
		if holds {
			for _, n := range repairs {
				s.scheduleRepair(repair{owner: o, node: n})
			}
		}
		if !took && reps[0] != "" {
			lost = append(lost, o)
		}
	}
	return results, lost
}

// maxPushOwners bounds the owners of one ReplicaPush (8 bytes each), well
// under the gRPC message limit.
const maxPushOwners = 100000

// chunkPush splits a push into requests of at most max owners.
func chunkPush(req *pb.ReplicaPushRequest, max int) []*pb.ReplicaPushRequest {
	var out []*pb.ReplicaPushRequest
	cur, n := &pb.ReplicaPushRequest{}, 0
	for _, d := range req.Deliveries {
		for owners := d.Owners; len(owners) > 0; {
			k := min(len(owners), max-n)
			cur.Deliveries = append(cur.Deliveries, &pb.Delivery{Entry: d.Entry, Owners: owners[:k]})
			owners, n = owners[k:], n+k
			if n == max {
				out, cur, n = append(out, cur), &pb.ReplicaPushRequest{}, 0
			}
		}
	}
	if n > 0 {
		out = append(out, cur)
	}
	return out
}

// Push adds one entry to many timelines.
func (s *Service) Push(ctx context.Context, r *pb.PushRequest) (*pb.PushResponse, error) {
	if err := checkEntry(r.Entry); err != nil {
		return nil, err
	}
	for i, o := range r.Owners {
		if o == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "owners[%d] is zero (unset)", i)
		}
	}
	v, _ := s.current()
	if v.rings == nil {
		return nil, status.Error(codes.FailedPrecondition, "the site has no timeline nodes")
	}
	results, _ := s.pushOwners(ctx, v, []*pb.TimelineEntry{r.Entry}, [][]uint64{r.Owners})
	resp := &pb.PushResponse{}
	for _, res := range results {
		if res.err != nil {
			// One entry: what was sent to the node is one delivery per
			// owner listed that it is a replica of, found by pushOwners'
			// ring lookups.
			resp.Failed += uint32(res.sent)
			continue
		}
		resp.Added += res.added
	}
	return resp, nil
}

// Remove removes an entry from timelines, on every replica.
func (s *Service) Remove(ctx context.Context, r *pb.TimelineRemoveRequest) (*pb.TimelineRemoveResponse, error) {
	if r.StatusId == 0 {
		return nil, status.Error(codes.InvalidArgument, "status_id is zero (unset)")
	}
	v, _ := s.current()
	byNode := map[string][]uint64{}
	for _, o := range r.Owners {
		for _, n := range v.replicas(o) {
			if n != "" {
				byNode[n] = append(byNode[n], o)
			}
		}
	}
	resp := &pb.TimelineRemoveResponse{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for n, owners := range byNode {
		wg.Go(func() {
			err := s.replicaCall(ctx, v, n, func(c pb.TimelinesClient) error {
				res, err := c.ReplicaRemove(ctx, &pb.ReplicaRemoveRequest{StatusId: r.StatusId, Owners: owners})
				if err == nil {
					mu.Lock()
					resp.Removed += res.Removed
					mu.Unlock()
				}
				return err
			})
			if err != nil {
				mu.Lock()
				resp.Failed += uint32(len(owners))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return resp, nil
}

// owned lists the queue partitions this node works: partition p goes to
// the (p mod n)-th of the n live timeline nodes in id order.
func (s *Service) owned(v *view) []int {
	live := s.live(v)
	i := slices.Index(live, s.cfg.NodeID)
	if i < 0 {
		return nil
	}
	var ps []int
	for p := range s.cfg.FanoutPartitions {
		if p%len(live) == i {
			ps = append(ps, p)
		}
	}
	return ps
}

// runFanout runs a worker per owned partition, restarting them when the
// view or the live nodes change.
func (s *Service) runFanout(ctx context.Context) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		v, changed := s.current()
		owned := s.owned(v)
		// The workers' reads and writes are Aviary's own: their reads are
		// served by this node's replicas when it has them (router.Internal).
		wctx, cancel := context.WithCancel(router.Internal(ctx))
		var wg sync.WaitGroup
		for _, p := range owned {
			wg.Go(func() {
				s.work(wctx, v, p)
				s.metrics.depth[p].Store(0) // no longer counted here
			})
		}
		if len(owned) > 0 {
			s.log.Debug("working fan-out partitions", "partitions", owned)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				break wait
			case <-changed:
				break wait
			case <-t.C:
				if !slices.Equal(s.owned(v), owned) {
					break wait
				}
			}
		}
		cancel()
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
	}
}

// Polling bounds of an idle worker.
const (
	idleMin = time.Millisecond
	idleMax = 50 * time.Millisecond
)

// work delivers queue partition p until ctx ends.
func (s *Service) work(ctx context.Context, v *view, p int) {
	owner := QueueOwner(v.site, p)
	idle, backoff := idleMin, 100*time.Millisecond
	for ctx.Err() == nil {
		n, err := s.fanoutOnce(ctx, v, p, owner)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.metrics.fanoutErrors.Inc()
			s.log.Warn("fan-out failed; retrying", "partition", p, "err", err, "retry_in", backoff)
			if timex.Sleep(ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if n > 0 {
			idle = idleMin
			if n < s.cfg.FanoutBatch && s.cfg.FanoutLinger > 0 && timex.Sleep(ctx, s.cfg.FanoutLinger) != nil {
				return
			}
			continue
		}
		t := time.NewTimer(idle)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-s.wake[p]:
		}
		t.Stop()
		idle = min(2*idle, idleMax)
	}
}

// maxQueueOffset keeps a worker's read of its oldest entries within the
// index's page-offset limit; a deeper queue is drained from there first.
const maxQueueOffset = 100000

// fanoutOnce delivers the oldest batch of a queue partition and removes
// it. It returns how many entries it delivered.
func (s *Service) fanoutOnce(ctx context.Context, v *view, p int, owner uint64) (int, error) {
	c, err := s.cfg.Data.Count(ctx, &pb.CountRequest{Table: TableFanout, Owner: owner})
	if err != nil {
		return 0, err
	}
	s.metrics.depth[p].Store(int64(c.Total))
	if c.Total == 0 {
		return 0, nil
	}
	offset := min(max(0, int(c.Total)-s.cfg.FanoutBatch), maxQueueOffset)
	rr, err := s.cfg.Data.Range(ctx, &pb.RangeRequest{Table: TableFanout, Owner: owner, Offset: int32(offset), Limit: int32(s.cfg.FanoutBatch)})
	if err != nil {
		return 0, err
	}
	if len(rr.Entries) == 0 {
		return 0, nil
	}
	var posts []post
	removes := make([]*pb.Mutation, 0, len(rr.Entries))
	for _, e := range rr.Entries {
		removes = append(removes, &pb.Mutation{Table: TableFanout, Op: &pb.Mutation_Remove_{Remove: &pb.Mutation_Remove{Owner: owner, Id: e.Id}}})
		pt, err := decodePost(e)
		if err != nil {
			s.log.Error("dropping a malformed fan-out queue entry", "partition", p, "err", err)
			continue
		}
		posts = append(posts, pt)
	}
	if err := s.deliver(ctx, v, posts); err != nil {
		return 0, err
	}
	// The removal is the worker's own write: a site that is not active
	// refuses its clients' writes, not this.
	if _, err := s.cfg.Data.Write(router.Internal(ctx), &pb.WriteRequest{Mutations: removes}); err != nil {
		return 0, fmt.Errorf("removing %d delivered queue entries: %w", len(removes), err)
	}
	now := time.Now()
	for _, pt := range posts {
		s.metrics.delivery.Observe(now.Sub(pt.accepted).Seconds())
		if s.cfg.OnDelivered != nil {
			s.cfg.OnDelivered(pt.id, pt.accepted)
		}
	}
	return len(rr.Entries), nil
}

// deliver pushes posts to their authors' and followers' timelines.
func (s *Service) deliver(ctx context.Context, v *view, posts []post) error {
	if v.rings == nil || len(posts) == 0 {
		return nil
	}
	entries := make([]*pb.TimelineEntry, len(posts))
	owners := make([][]uint64, len(posts))
	followers := map[uint64][]uint64{} // per author, read once per batch
	for i, pt := range posts {
		entries[i] = pt.entry()
		owners[i] = []uint64{pt.author}
		if s.celebs.has(pt.author) {
			continue
		}
		fs, ok := followers[pt.author]
		if !ok {
			if err := s.pageIDs(ctx, TableFollowers, pt.author, maxFollowing, func(e *pb.Entry) { fs = append(fs, e.Id) }); err != nil {
				return fmt.Errorf("reading the followers of %d: %w", pt.author, err)
			}
			followers[pt.author] = fs
		}
		owners[i] = append(owners[i], fs...)
	}
	var pushes int
	for i := range owners {
		pushes += len(owners[i])
	}
	results, lost := s.pushOwners(ctx, v, entries, owners)
	s.metrics.fanoutPushes.Add(float64(pushes))
	if len(lost) > 0 {
		var errs []error
		for n, r := range results {
			if r.err != nil {
				errs = append(errs, fmt.Errorf("node %s: %w", n, r.err))
			}
		}
		return fmt.Errorf("%d timelines have no reachable replica: %w", len(lost), errors.Join(errs...))
	}
	return nil
}

// runRefill asks the siblings for the timelines the rings place here,
// when this node starts and whenever the rings change.
func (s *Service) runRefill(ctx context.Context) {
	for {
		v, changed := s.current()
		if slices.Contains(v.ids, s.cfg.NodeID) && len(v.ids) > 1 {
			s.refill(ctx, v, changed)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// refill pulls from every sibling, all at once, until each has answered
// once, or the view changes: a sibling that hangs holds back no other's
// copies.
func (s *Service) refill(ctx context.Context, v *view, changed <-chan struct{}) {
	todo := slices.DeleteFunc(slices.Clone(v.ids), func(id string) bool { return id == s.cfg.NodeID })
	backoff := 100 * time.Millisecond
	start, total := time.Now(), 0
	for len(todo) > 0 {
		var mu sync.Mutex
		var failed []string
		var wg sync.WaitGroup
		for _, n := range todo {
			wg.Go(func() {
				got, err := s.refillFrom(ctx, v, n)
				mu.Lock()
				defer mu.Unlock()
				total += got
				if err != nil {
					failed = append(failed, n)
					s.log.Info("timeline refill from a sibling failed; will retry", "node", n, "err", err)
				}
			})
		}
		wg.Wait()
		todo = failed
		if len(todo) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	s.log.Info("timelines refilled from siblings", "copies_merged", total, "took", time.Since(start).Round(time.Millisecond), "ring_nodes", len(v.ids))
}

// refillFrom merges in what node holds of the timelines placed here and
// returns how many it sent. A sibling that sends nothing for
// --replica-timeout is given up and taken for down (exportFrom); refill
// asks it again later.
func (s *Service) refillFrom(ctx context.Context, v *view, node string) (int, error) {
	n := 0
	err := s.exportFrom(ctx, v, node, s.cfg.NodeID, true, s.mergeExport(&n))
	return n, err
}

// mergeExport returns a ReplicaExport receiver that merges each timeline
// sent into this node's store, counting them in n.
func (s *Service) mergeExport(n *int) func(*pb.ReplicaExportResponse) error {
	return func(resp *pb.ReplicaExportResponse) error {
		for _, t := range resp.Timelines {
			if err := checkColumns(t); err != nil {
				return err
			}
			s.store.Merge(t.Owner, replicaEntries(t))
			*n++
			s.metrics.refilled.Inc()
		}
		return nil
	}
}
