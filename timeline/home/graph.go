package home

import (
	"cmp"
	"context"
	"encoding/binary"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pageLimit is the entries of one index page the service reads.
const pageLimit = 1000

// maxFollowing bounds the followed users a rebuild or a read merge reads.
const maxFollowing = 100000

// Follow records or removes a follow edge in both directions, and marks the
// followee a celebrity once their follower count passes the threshold.
func (s *Service) Follow(ctx context.Context, r *pb.FollowRequest) (*pb.FollowResponse, error) {
	switch {
	case r.FollowerId == 0 || r.FolloweeId == 0:
		return nil, status.Error(codes.InvalidArgument, "follower_id and followee_id are required")
	case r.FollowerId == r.FolloweeId:
		return nil, status.Error(codes.InvalidArgument, "a user cannot follow themselves: their own posts are on their timeline already")
	}
	edge := func(table string, owner, id uint64) *pb.Mutation {
		if r.Unfollow {
			return &pb.Mutation{Table: table, Op: &pb.Mutation_Remove_{Remove: &pb.Mutation_Remove{Owner: owner, Id: id}}}
		}
		return &pb.Mutation{Table: table, Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: owner, Id: id}}}
	}
	if _, err := s.cfg.Data.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{
		edge(TableFollowing, r.FollowerId, r.FolloweeId),
		edge(TableFollowers, r.FolloweeId, r.FollowerId),
	}}); err != nil {
		return nil, err
	}
	s.follows.forget(r.FollowerId)
	if r.Unfollow || s.celebs.has(r.FolloweeId) {
		return &pb.FollowResponse{}, nil
	}
	c, err := s.cfg.Data.Count(ctx, &pb.CountRequest{Table: TableFollowers, Owner: r.FolloweeId})
	if err != nil {
		return nil, err
	}
	if c.Total > uint64(s.cfg.CelebrityFollowers) {
		if _, err := s.cfg.Data.Write(ctx, &pb.WriteRequest{Mutations: []*pb.Mutation{{Table: TableCelebrities,
			Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: celebritiesOwner, Id: r.FolloweeId}}}}}); err != nil {
			return nil, err
		}
		s.celebs.add(r.FolloweeId)
		s.log.Info("author marked a celebrity: merged at read time from now on", "author", r.FolloweeId, "followers", c.Total)
	}
	return &pb.FollowResponse{}, nil
}

// pageIDs reads all entry ids of an owner in an index table, newest first,
// up to max.
func (s *Service) pageIDs(ctx context.Context, table string, owner uint64, max int, fn func(e *pb.Entry)) error {
	var maxID uint64
	for n := 0; n < max; {
		resp, err := s.cfg.Data.Range(ctx, &pb.RangeRequest{Table: table, Owner: owner, MaxId: maxID, Limit: pageLimit})
		if err != nil {
			return err
		}
		for _, e := range resp.Entries {
			fn(e)
		}
		n += len(resp.Entries)
		if resp.NextMaxId == 0 {
			return nil
		}
		maxID = resp.NextMaxId
	}
	return nil
}

// following reads the ids a user follows.
func (s *Service) following(ctx context.Context, owner uint64) ([]uint64, error) {
	var ids []uint64
	err := s.pageIDs(ctx, TableFollowing, owner, maxFollowing, func(e *pb.Entry) { ids = append(ids, e.Id) })
	return ids, err
}

// posts reads an author's newest posts within a query's bounds.
func (s *Service) posts(ctx context.Context, author, maxID, sinceID uint64, limit int) ([]timeline.Entry, error) {
	resp, err := s.cfg.Data.Range(ctx, &pb.RangeRequest{Table: TablePosts, Owner: author, MaxId: maxID, SinceId: sinceID, Limit: int32(min(limit, pageLimit))})
	if err != nil {
		return nil, err
	}
	out := make([]timeline.Entry, len(resp.Entries))
	for i, e := range resp.Entries {
		out[i] = timeline.Entry{StatusID: e.Id, AuthorID: author, Flags: postFlags(e.Payload)}
	}
	return out, nil
}

func postFlags(payload []byte) uint32 {
	if len(payload) < 4 {
		return 0
	}
	return binary.LittleEndian.Uint32(payload)
}

// newest merges entry lists into the newest limit distinct ids, newest
// first.
func newest(lists [][]timeline.Entry, limit int) []timeline.Entry {
	var all []timeline.Entry
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.SortFunc(all, func(a, b timeline.Entry) int { return cmp.Compare(b.StatusID, a.StatusID) }) // newest first
	all = slices.CompactFunc(all, func(a, b timeline.Entry) bool { return a.StatusID == b.StatusID })
	if len(all) > limit {
		all = all[:limit]
	}
	return all
}

// rebuildConcurrency bounds the index reads of one rebuild.
const rebuildConcurrency = 16

// rebuildTimeout bounds one rebuild.
const rebuildTimeout = 30 * time.Second

// rebuild computes a timeline from the index (the newest Capacity posts of
// the user and of the non-celebrities they follow) and installs it on
// every reachable replica, reserved first so that pushes that arrive while
// it reads are kept. Concurrent rebuilds of one timeline share one.
func (s *Service) rebuild(ctx context.Context, v *view, owner uint64) ([]timeline.Entry, error) {
	return s.building.do(ctx, owner, func() ([]timeline.Entry, error) {
		// Detached from the first reader: the readers waiting for it may
		// have longer deadlines.
		ctx, cancel := context.WithTimeout(s.life, rebuildTimeout)
		defer cancel()
		reps := v.replicas(owner)
		var held, unreached []string
		for _, n := range reps {
			if n == "" {
				continue
			}
			if s.replicaCall(ctx, v, n, func(c pb.TimelinesClient) error {
				_, err := c.ReplicaReserve(ctx, &pb.ReplicaReserveRequest{Owners: []uint64{owner}})
				return err
			}) == nil {
				held = append(held, n)
			} else {
				unreached = append(unreached, n)
			}
		}
		// Replicas not reached get the rebuilt timeline by repair, retried
		// until they answer.
		defer func() {
			for _, n := range unreached {
				s.scheduleRepair(repair{owner: owner, node: n})
			}
		}()
		// A failed rebuild leaves its reservations, rather than giving them
		// up (Store.Unreserve): readers see a pending timeline as not held,
		// so the next read rebuilds it again, and in the meantime it keeps
		// the entries pushed to it for that rebuild's merge. Giving it up
		// could also drop a reservation a rebuild of the same timeline on
		// another node is counting on.
		authors, err := s.following(ctx, owner)
		if err != nil {
			return nil, err
		}
		authors = slices.DeleteFunc(authors, s.celebs.has)
		authors = append(authors, owner)
		lists := make([][]timeline.Entry, len(authors))
		errs := make([]error, len(authors))
		sem := make(chan struct{}, rebuildConcurrency)
		var wg sync.WaitGroup
		for i, a := range authors {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				lists[i], errs[i] = s.posts(ctx, a, 0, 0, s.cfg.Capacity)
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		es := newest(lists, s.cfg.Capacity)
		t := &pb.ReplicaTimeline{Owner: owner, Held: true, Entries: fromEntries(es), Length: uint32(len(es))}
		for _, n := range held {
			if _, err := s.replicaMerge(ctx, v, n, &pb.ReplicaMergeRequest{Timelines: []*pb.ReplicaTimeline{t}}); err != nil {
				s.log.Debug("installing a rebuilt timeline failed", "owner", owner, "node", n, "err", err)
				unreached = append(unreached, n)
			}
		}
		s.metrics.rebuilds.Inc()
		return es, nil
	})
}

// replicaCall calls a replica through gRPC, or this node's service
// directly.
func (s *Service) replicaCall(ctx context.Context, v *view, node string, fn func(pb.TimelinesClient) error) error {
	if node == s.cfg.NodeID && s.store != nil {
		return fn(localClient{s: s})
	}
	c, err := s.client(v, node)
	if err != nil {
		return err
	}
	return fn(c)
}

// flight shares one rebuild of a timeline among concurrent readers.
type flight struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	calls map[uint64]*flightCall
}

type flightCall struct {
	done chan struct{}
	es   []timeline.Entry
	err  error
}

func (f *flight) do(ctx context.Context, owner uint64, fn func() ([]timeline.Entry, error)) ([]timeline.Entry, error) {
	f.mu.Lock()
	c, ok := f.calls[owner]
	if !ok {
		if f.calls == nil {
			f.calls = map[uint64]*flightCall{}
		}
		c = &flightCall{done: make(chan struct{})}
		f.calls[owner] = c
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			c.es, c.err = fn()
			f.mu.Lock()
			delete(f.calls, owner)
			f.mu.Unlock()
			close(c.done)
		}()
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.es, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// celebrities is the site's set of authors merged in at read time.
type celebrities struct {
	set atomic.Pointer[map[uint64]bool]
	mu  sync.Mutex // serializes writers
}

func (c *celebrities) has(id uint64) bool {
	m := c.set.Load()
	return m != nil && (*m)[id]
}

func (c *celebrities) all() map[uint64]bool {
	if m := c.set.Load(); m != nil {
		return *m
	}
	return nil
}

// add adds ids to the set. Readers load the set without a lock, so a
// change is a new map swapped in; it is made only if an id is new, as the
// set only grows and its reread every celebritiesEvery mostly finds
// nothing new.
func (c *celebrities) add(ids ...uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cur map[uint64]bool
	if p := c.set.Load(); p != nil {
		cur = *p
	}
	i := slices.IndexFunc(ids, func(id uint64) bool { return !cur[id] })
	if i < 0 {
		return
	}
	m := make(map[uint64]bool, len(cur)+len(ids)-i)
	maps.Copy(m, cur)
	for _, id := range ids[i:] {
		m[id] = true
	}
	c.set.Store(&m)
}

// celebritiesEvery is how often the celebrity set is reread.
const celebritiesEvery = 2 * time.Second

func (s *Service) runCelebrities(ctx context.Context) {
	for {
		var ids []uint64
		err := s.pageIDs(ctx, TableCelebrities, celebritiesOwner, pageLimit, func(e *pb.Entry) { ids = append(ids, e.Id) })
		if err == nil && len(ids) > 0 {
			s.celebs.add(ids...)
		}
		if timex.Sleep(ctx, celebritiesEvery) != nil {
			return
		}
	}
}

// followCache keeps the users each reader follows for a few seconds, for
// the celebrity merge of reads.
type followCache struct {
	mu      sync.Mutex
	entries map[uint64]followEntry
}

type followEntry struct {
	at  time.Time
	ids []uint64
}

const followCacheTTL = 5 * time.Second

func (f *followCache) forget(owner uint64) {
	f.mu.Lock()
	delete(f.entries, owner)
	f.mu.Unlock()
}

// celebritiesOf returns the celebrities a user follows.
func (s *Service) celebritiesOf(ctx context.Context, owner uint64) ([]uint64, error) {
	f := &s.follows
	f.mu.Lock()
	e, ok := f.entries[owner]
	f.mu.Unlock()
	if !ok || time.Since(e.at) > followCacheTTL {
		ids, err := s.following(ctx, owner)
		if err != nil {
			return nil, err
		}
		e = followEntry{at: time.Now(), ids: ids}
		f.mu.Lock()
		if len(f.entries) > 100000 {
			clear(f.entries)
		}
		f.entries[owner] = e
		f.mu.Unlock()
	}
	var out []uint64
	for _, id := range e.ids {
		if s.celebs.has(id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// celebrityPosts returns, for a read, the newest posts of each celebrity
// its reader follows (none if the reader follows none), to be merged into
// the timeline read.
func (s *Service) celebrityPosts(ctx context.Context, q *pb.TimelineQuery) ([][]timeline.Entry, error) {
	if len(s.celebs.all()) == 0 {
		return nil, nil
	}
	cs, err := s.celebritiesOf(ctx, q.Owner)
	if err != nil || len(cs) == 0 {
		return nil, err
	}
	lists := make([][]timeline.Entry, 0, len(cs))
	for _, c := range cs {
		es, err := s.posts(ctx, c, q.MaxId, q.SinceId, int(q.Limit))
		if err != nil {
			return nil, err
		}
		lists = append(lists, es)
	}
	return lists, nil
}
