package home

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultReadLimit is the entries of a read that names no limit.
const defaultReadLimit = 20

// maxQueries bounds the timelines of one Read.
const maxQueries = 1000

// query is one timeline of a Read in progress.
type query struct {
	q        *pb.TimelineQuery
	replicas [timeline.NumReplicas]string
	tried    int // replicas asked, in order
	inflight int
	done     bool
	answer   *pb.ReplicaTimeline // another replica's answer
	local    []timeline.Entry    // or this node's, from its memory (answer nil)
	winner   string
	lacking  []string // replicas that answered "not held"
	failed   int      // replicas that failed
}

// order puts the replicas of a timeline in the order a read tries them:
// this node first if it is one (no network hop), then ring order, replicas
// recently down last, empty slots dropped.
func (s *Service) order(reps [timeline.NumReplicas]string) [timeline.NumReplicas]string {
	var up, down []string
	for _, r := range reps {
		switch {
		case r == "":
		case s.isDown(r):
			down = append(down, r)
		case r == s.cfg.NodeID && s.store != nil:
			up = append([]string{r}, up...)
		default:
			up = append(up, r)
		}
	}
	var out [timeline.NumReplicas]string
	copy(out[:], append(up, down...))
	return out
}

type readReply struct {
	node string
	qs   []int
	resp *pb.ReplicaReadResponse
	err  error
}

// readReplicas reads every query from the first replica that holds it,
// hedging to the next replica after the hedge delay. It returns as soon as
// every query is answered (the RPCs still out are cancelled), or when every
// replica asked has answered. Queries no replica holds come back with done
// false.
func (s *Service) readReplicas(ctx context.Context, v *view, qs []*query) {
	if !slices.ContainsFunc(qs, func(q *query) bool { return !q.done }) {
		return // all answered from this node's memory
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	replies := make(chan readReply, len(qs)*timeline.NumReplicas)
	outstanding := 0
	// launch asks the next replica of each of the given queries, one
	// ReplicaRead per node.
	launch := func(idx []int) {
		byNode := map[string][]int{}
		for _, i := range idx {
			q := qs[i]
			if q.done || q.tried >= timeline.NumReplicas || q.replicas[q.tried] == "" {
				continue
			}
			n := q.replicas[q.tried]
			q.tried++
			q.inflight++
			byNode[n] = append(byNode[n], i)
		}
		for n, is := range byNode {
			outstanding++
			req := &pb.ReplicaReadRequest{Queries: make([]*pb.TimelineQuery, len(is)), Packed: true}
			for k, i := range is {
				req.Queries[k] = qs[i].q
			}
			go func() {
				start := time.Now()
				resp, err := s.replicaRead(ctx, v, n, req)
				if err == nil {
					s.hedge.Record(time.Since(start))
				}
				replies <- readReply{node: n, qs: is, resp: resp, err: err}
			}()
		}
	}
	all := make([]int, len(qs))
	for i := range all {
		all[i] = i
	}
	launch(all)
	delay := s.hedge.Delay(s.cfg.HedgeMin, s.cfg.HedgeMax)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	pending := func() (idx []int) {
		for i, q := range qs {
			if !q.done {
				idx = append(idx, i)
			}
		}
		return idx
	}
	unanswered := len(pending())
	for outstanding > 0 && unanswered > 0 {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			// Hedge: every query still waiting asks its next replica.
			var idx []int
			for _, i := range pending() {
				if qs[i].inflight > 0 {
					idx = append(idx, i)
				}
			}
			if len(idx) > 0 {
				s.metrics.hedges.Add(float64(len(idx)))
			}
			launch(idx)
			timer.Reset(delay)
		case r := <-replies:
			outstanding--
			var next []int
			if r.err != nil && ctx.Err() == nil {
				s.markDown(r.node)
				s.log.Debug("timeline replica read failed", "node", r.node, "err", r.err)
			}
			for k, i := range r.qs {
				q := qs[i]
				q.inflight--
				if q.done {
					continue
				}
				switch {
				case r.err != nil:
					q.failed++
					next = append(next, i)
				case r.resp.Results[k].Held:
					q.done, q.answer, q.winner = true, r.resp.Results[k], r.node
					unanswered--
				default:
					q.lacking = append(q.lacking, r.node)
					next = append(next, i)
				}
			}
			launch(next) // passed over at once: not held, or failed
		}
	}
}

// replicaRead reads from one replica; this node's own memory is read
// directly.
func (s *Service) replicaRead(ctx context.Context, v *view, node string, req *pb.ReplicaReadRequest) (resp *pb.ReplicaReadResponse, err error) {
	err = s.replicaCall(ctx, v, node, func(c pb.TimelinesClient) error {
		resp, err = c.ReplicaRead(ctx, req)
		if err != nil {
			return err
		}
		if len(resp.Results) != len(req.Queries) {
			return errors.New("home: replica answered a different number of timelines")
		}
		for _, t := range resp.Results {
			if err := checkColumns(t); err != nil {
				return fmt.Errorf("home: replica answered %w", err)
			}
		}
		return nil
	})
	return resp, err
}

func checkQuery(q *pb.TimelineQuery, capacity int) error {
	switch {
	case q == nil || q.Owner == 0:
		return errors.New("owner is zero (unset)")
	case q.Limit < 0 || int(q.Limit) > capacity:
		return errors.New("limit is not in [0, capacity]")
	}
	return nil
}

// Read reads timelines: hedged replica reads, read-repair, rebuilds from
// the index, and celebrities merged in.
func (s *Service) Read(ctx context.Context, r *pb.ReadRequest) (*pb.ReadResponse, error) {
	if len(r.Queries) == 0 {
		return nil, status.Error(codes.InvalidArgument, "queries is empty")
	}
	if len(r.Queries) > maxQueries {
		return nil, status.Errorf(codes.InvalidArgument, "queries: %d timelines in one read, limit is %d", len(r.Queries), maxQueries)
	}
	qs := make([]*query, len(r.Queries))
	v, _ := s.current()
	for i, q := range r.Queries {
		if err := checkQuery(q, s.cfg.Capacity); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "queries[%d]: %v (capacity %d)", i, err, s.cfg.Capacity)
		}
		if q.Limit == 0 {
			q = &pb.TimelineQuery{Owner: q.Owner, MaxId: q.MaxId, SinceId: q.SinceId, Limit: defaultReadLimit}
		}
		qs[i] = &query{q: q, replicas: s.order(v.replicas(q.Owner))}
		if qs[i].replicas[0] == s.cfg.NodeID && s.store != nil {
			// This node is a replica, asked first: its memory answers
			// without a goroutine, a timer or a network hop.
			if es, _, held := s.store.Read(q.Owner, q.MaxId, q.SinceId, int(q.Limit)); held {
				qs[i].done, qs[i].local, qs[i].winner = true, es, s.cfg.NodeID
			} else {
				qs[i].tried, qs[i].lacking = 1, []string{s.cfg.NodeID} // asked: the next replica
			}
		}
	}
	s.readReplicas(ctx, v, qs)
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	resp := &pb.ReadResponse{Results: make([]*pb.TimelineResult, len(qs))}
	for i, q := range qs {
		res := &pb.TimelineResult{Owner: q.q.Owner}
		es := q.local
		if q.done {
			res.Node = q.winner
			for _, n := range q.lacking {
				s.scheduleRepair(repair{owner: q.q.Owner, node: n})
			}
			s.metrics.reads.WithLabelValues("replica").Inc()
		} else {
			all, err := s.rebuild(ctx, v, q.q.Owner)
			if err != nil {
				s.metrics.reads.WithLabelValues("error").Inc()
				return nil, status.Errorf(codes.Unavailable, "timeline %d: no replica answered and the rebuild from the index failed: %v", q.q.Owner, err)
			}
			es, res.Rebuilt = window(all, q.q), true
			s.metrics.reads.WithLabelValues("rebuilt").Inc()
		}
		celebs, err := s.celebrityPosts(ctx, q.q)
		if err != nil {
			return nil, status.Errorf(status.Code(err), "timeline %d: celebrities: %s", q.q.Owner, status.Convert(err).Message())
		}
		// Another replica's answer goes out as it came when it has the
		// form the client asked for (a node that predates packed answers
		// sends entries).
		a := q.answer
		switch {
		case a != nil && len(celebs) == 0 && r.Packed && len(a.Entries) == 0:
			res.StatusIds, res.AuthorIds, res.Flags = a.StatusIds, a.AuthorIds, a.Flags
		case a != nil && len(celebs) == 0 && !r.Packed && len(a.StatusIds) == 0:
			res.Entries = a.Entries
		default:
			if a != nil {
				es = replicaEntries(a)
			}
			if len(celebs) > 0 {
				es = newest(append([][]timeline.Entry{es}, celebs...), int(q.q.Limit))
			}
			setEntries(res, es, r.Packed)
		}
		resp.Results[i] = res
	}
	return resp, nil
}

// setEntries puts es, newest first, into res: as entries, or packed as
// columns (ReadRequest.packed).
func setEntries(res *pb.TimelineResult, es []timeline.Entry, packed bool) {
	if !packed {
		res.Entries = fromEntries(es)
		return
	}
	res.StatusIds, res.AuthorIds, res.Flags = toColumns(es)
}

// window applies a query's max_id, since_id and limit to a timeline held
// newest first.
func window(es []timeline.Entry, q *pb.TimelineQuery) []timeline.Entry {
	var out []timeline.Entry
	for _, e := range es {
		if q.MaxId != 0 && e.StatusID > q.MaxId {
			continue
		}
		if e.StatusID <= q.SinceId || len(out) == int(q.Limit) {
			break
		}
		out = append(out, e)
	}
	return out
}

// Length returns a timeline's length from the first replica that holds it.
func (s *Service) Length(ctx context.Context, r *pb.LengthRequest) (*pb.LengthResponse, error) {
	q := &query{q: &pb.TimelineQuery{Owner: r.Owner, Limit: 1}}
	if err := checkQuery(q.q, s.cfg.Capacity); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	v, _ := s.current()
	q.replicas = s.order(v.replicas(r.Owner))
	s.readReplicas(ctx, v, []*query{q})
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if !q.done {
		return nil, status.Errorf(codes.NotFound, "timeline %d is held by no replica", r.Owner)
	}
	return &pb.LengthResponse{Length: q.answer.Length, Node: q.winner}, nil
}

// repair is a timeline to copy onto a replica that lacks it.
type repair struct {
	owner uint64
	node  string
}

// A repair is asked for once what it copies is on a sibling: the entry a
// replica missed was pushed to the siblings first. So a catch-up of its
// node that begins after the repair was asked for covers it (catchup.go),
// unless the sibling holds the timeline reserved for a rebuild (pending),
// which no export sends: see the limits in doc.go.

// coveredLocked reports whether repair r, asked for earlier, is covered
// by a catch-up to come: its node is behind, for a whole catch-up.
// repairMu is held.
func (s *Service) coveredLocked(r repair) bool {
	return s.behind[r.node].whole()
}

// requeueRepair queues a repair again after it failed, unless a catch-up
// to come covers it.
func (s *Service) requeueRepair(r repair) {
	s.repairMu.Lock()
	marked := false
	if s.coveredLocked(r) {
		delete(s.attempts, r)
	} else {
		marked = s.scheduleRepairLocked(r)
	}
	s.repairMu.Unlock()
	if marked {
		s.logBehind(r.node, fmt.Sprintf("the repair queue (%d) was full", cap(s.repairs)))
	}
}

// scheduleRepair queues a repair, or, if the queue is full, marks its
// node behind (catchup.go). A repair of a node behind for a whole
// catch-up is noted for after it: one that began earlier may have read
// that timeline's siblings before the push reached them.
func (s *Service) scheduleRepair(r repair) {
	s.repairMu.Lock()
	marked := s.scheduleRepairLocked(r)
	s.repairMu.Unlock()
	if marked {
		s.logBehind(r.node, fmt.Sprintf("the repair queue (%d) was full", cap(s.repairs)))
	}
}

// scheduleRepairLocked is scheduleRepair with repairMu held; it reports
// whether it marked the node behind (for the caller to log, unlocked).
func (s *Service) scheduleRepairLocked(r repair) (marked bool) {
	if b := s.behind[r.node]; b.whole() {
		s.noteLocked(r.node, b, r.owner)
		return false
	}
	return s.queueRepairLocked(r)
}

// queueRepairLocked queues r even if its node is behind, or, if the
// queue is full, notes it there or marks the node behind (then it
// reports true). repairMu is held.
func (s *Service) queueRepairLocked(r repair) (marked bool) {
	if s.queued[r] {
		return false
	}
	select {
	case s.repairs <- r:
		s.queued[r] = true
		return false
	default:
		delete(s.attempts, r)
		s.metrics.repairs.WithLabelValues("dropped").Inc()
		if b := s.behind[r.node]; b != nil {
			s.noteLocked(r.node, b, r.owner)
			return false
		}
		return s.markBehindLocked(r.node)
	}
}

// runRepairs copies timelines onto replicas that lack them, from a sibling
// that holds them.
func (s *Service) runRepairs(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-s.repairs:
					s.repairMu.Lock()
					delete(s.queued, r)
					// Asked for before its node was marked behind for a
					// whole catch-up, so before that catch-up: covered.
					covered := s.coveredLocked(r)
					if covered {
						delete(s.attempts, r)
					}
					s.repairMu.Unlock()
					if covered {
						s.metrics.repairs.WithLabelValues("dropped").Inc()
						continue
					}
					outcome := "done"
					if err := s.repairOne(ctx, r); err != nil {
						outcome = "failed"
						s.log.Debug("timeline repair failed", "owner", r.owner, "node", r.node, "err", err)
						s.retryRepair(r, err)
					} else {
						s.repairMu.Lock()
						delete(s.attempts, r)
						s.repairMu.Unlock()
					}
					s.metrics.repairs.WithLabelValues(outcome).Inc()
				}
			}
		})
	}
}

// Repairs that fail (the replica or its siblings down) are retried every
// repairRetry, up to repairAttempts times (while the replica is taken for
// down a retry fails without a call, so that is about two minutes); then
// the node is marked behind, and caught up whole once it answers
// (catchup.go), unless no sibling held the timeline at the last attempt.
// A node that restarts refills itself from its siblings.
const (
	repairRetry    = time.Second
	repairAttempts = 120
)

// retryRepair retries a repair that failed with err, or gives it up after
// repairAttempts. A node whose repair is given up is marked behind, unless
// no sibling held the timeline at the last attempt: then no replica holds
// it, and the next read rebuilds it on every replica.
func (s *Service) retryRepair(r repair, err error) {
	s.repairMu.Lock()
	s.attempts[r]++
	n := s.attempts[r]
	marked := false
	if n >= repairAttempts {
		delete(s.attempts, r)
		switch b := s.behind[r.node]; {
		case errors.Is(err, errNoSource):
		case b.whole():
			// Asked for before the whole catch-up to come, or running,
			// began: covered by it.
		case b != nil:
			// Behind for a catch-up from some sources only, which
			// covers nothing: a whole one is needed.
			s.wholeLocked(r.node, b)
		default:
			marked = s.markBehindLocked(r.node)
		}
	}
	s.repairMu.Unlock()
	if marked {
		s.logBehind(r.node, fmt.Sprintf("a repair failed %d times", n))
	}
	if n < repairAttempts {
		time.AfterFunc(repairRetry, func() {
			if s.life.Err() == nil {
				s.requeueRepair(r)
			}
		})
	}
}

var (
	// errHeldDown fails a repair of a node taken for down without a
	// call: a call to a node that hangs would hold a repair worker for
	// its timeout.
	errHeldDown = errors.New("home: the node is taken for down")
	// errNoSource fails a repair no sibling had the timeline for: it may
	// be reserved there for a rebuild (answered as not held) and hold the
	// push this repair is for, so the repair is retried.
	errNoSource = errors.New("home: no sibling holds the timeline")
)

func (s *Service) repairOne(ctx context.Context, r repair) error {
	if s.isDown(r.node) {
		return errHeldDown
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, _ := s.current()
	reps := v.replicas(r.owner)
	if !slices.Contains(reps[:], r.node) {
		return nil // the rings moved on
	}
	// Entries, not columns: the answer goes on to r.node as it came, and
	// a node that predates the columns would read a packed one as empty.
	full := &pb.ReplicaReadRequest{Queries: []*pb.TimelineQuery{{Owner: r.owner, Limit: int32(s.cfg.Capacity)}}}
	// Every sibling that holds the timeline is copied from (merging is a
	// union): one of them may have missed the push too.
	var last error = errNoSource
	merge := &pb.ReplicaMergeRequest{}
	for _, n := range reps {
		if n == "" || n == r.node {
			continue
		}
		// A sibling that is behind may lack what r.node lacks.
		if s.isDown(n) || s.isBehind(n) {
			last = fmt.Errorf("home: sibling %s is taken for down or behind", n)
			continue
		}
		resp, err := s.replicaRead(ctx, v, n, full)
		if err != nil {
			last = err
			continue
		}
		if t := resp.Results[0]; t.Held {
			merge.Timelines = append(merge.Timelines, t)
		}
	}
	if len(merge.Timelines) == 0 {
		return last
	}
	_, err := s.replicaMerge(ctx, v, r.node, merge)
	if c := status.Code(err); c == codes.DeadlineExceeded || c == codes.Unavailable {
		s.markDown(r.node) // its next repairs fail without a call for a while
	}
	return err
}

func (s *Service) replicaMerge(ctx context.Context, v *view, node string, req *pb.ReplicaMergeRequest) (resp *pb.ReplicaMergeResponse, err error) {
	err = s.replicaCall(ctx, v, node, func(c pb.TimelinesClient) error {
		resp, err = c.ReplicaMerge(ctx, req)
		return err
	})
	return resp, err
}
