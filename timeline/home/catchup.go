package home

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
)

// Catching up a node that missed more pushes than repairs deliver.
//
// A push that a replica misses is repaired timeline by timeline (repair,
// in read.go). That is cheap after a short outage, but the repair queue is
// bounded (Config.RepairQueue) and a repair is retried for about two
// minutes only (repairAttempts). A node that misses pushes to more
// timelines than the queue holds, or is away longer, would keep stale
// timelines for good: it is not empty, so nothing refills it, and a read
// that reaches it first is answered from them. Such a node is marked
// behind instead, and once it answers again it is caught up whole: every
// timeline the rings place on it is read from each of the other ring
// nodes (ReplicaExport; this node's own memory without a call) and merged
// into it, as a node that restarts refills itself. Merging is a union of
// immutable entries, so a catch-up is safe at any time; what it costs is
// a copy of every timeline the node holds, from each other ring node,
// relayed through this one.
//
// While a whole catch-up of a node is to come or running, the repairs of
// it asked for are noted rather than queued. A repair is asked for once
// what it copies is on a sibling, so those asked for before a whole
// catch-up began are covered by it (the repair workers drop the ones
// queued earlier: coveredLocked); the others are queued once it is done.
// A catch-up that some sources did not answer is whole for the others:
// the noted repairs are queued, and the next catch-up asks only the
// sources that failed. That one covers nothing, so meanwhile the node's
// repairs are queued and carried out as any node's (noted only when the
// queue is full). Too many noted, or a repair of the node given up,
// call for a whole catch-up again.

const (
	// catchUpEvery is how often the behind nodes are looked at.
	catchUpEvery = time.Second
	// catchUpRetry is the wait after a catch-up the node itself did not
	// answer (it is tried again once it answers), and the first wait after
	// one that a source did not answer, or that noted too many repairs;
	// that wait doubles each time, up to catchUpMaxRetry.
	catchUpRetry    = 5 * time.Second
	catchUpMaxRetry = 5 * time.Minute
)

// behindNode is a node that missed pushes no repair will deliver.
type behindNode struct {
	// missed holds the repairs of the node noted since the last whole
	// catch-up began, or since they were last queued: those asked for
	// while a whole catch-up is to come or running, and those that found
	// the queue full. They are queued once a catch-up is done. More than
	// maxMissed overflow: the node needs a whole catch-up again.
	missed    map[uint64]struct{}
	overflow  bool
	maxMissed int
	// sources are the nodes the next catch-up asks; nil: every other
	// ring node (a whole catch-up).
	sources []string
	wait    time.Duration
	next    time.Time // not tried before
}

// whole reports whether a whole catch-up of the node is to come or
// running (false for a node not behind).
func (b *behindNode) whole() bool { return b != nil && b.sources == nil }

// backOff sets when to try the node next, after its current wait, and
// doubles the wait; it returns the wait it used.
func (b *behindNode) backOff(now time.Time) time.Duration {
	w := b.wait
	b.next, b.wait = now.Add(w), min(2*w, catchUpMaxRetry)
	return w
}

// noteLocked records a repair of node b's timeline owner for after its
// catch-up. repairMu is held.
func (s *Service) noteLocked(node string, b *behindNode, owner uint64) {
	if b.overflow {
		return
	}
	if _, ok := b.missed[owner]; ok {
		return
	}
	if len(b.missed) >= b.maxMissed {
		s.wholeLocked(node, b)
		return
	}
	if b.missed == nil {
		b.missed = map[uint64]struct{}{}
	}
	b.missed[owner] = struct{}{}
}

// wholeLocked gives up node b's noted repairs: it needs a whole catch-up
// (again), which covers them. A catch-up running now ends as "again".
// repairMu is held.
func (s *Service) wholeLocked(node string, b *behindNode) {
	s.forgetLocked(node, b)
	b.overflow, b.sources = true, nil
}

// forgetLocked drops node b's noted repairs and their attempt counts.
// repairMu is held.
func (s *Service) forgetLocked(node string, b *behindNode) {
	for o := range b.missed {
		delete(s.attempts, repair{owner: o, node: node})
	}
	b.missed = nil
}

// markBehindLocked marks node behind; it reports whether it was not
// already (for the caller to log, unlocked: logBehind). repairMu is held.
func (s *Service) markBehindLocked(node string) bool {
	if s.behind[node] != nil {
		return false
	}
	s.behind[node] = &behindNode{maxMissed: max(1, cap(s.repairs)/2), wait: catchUpRetry}
	s.metrics.behind.Set(float64(len(s.behind)))
	return true
}

func (s *Service) logBehind(node, why string) {
	s.log.Warn("timeline node missed more pushes than repairs deliver; it will be caught up from its siblings once it answers",
		"node", node, "why", why)
}

// isBehind reports whether node is marked behind here.
func (s *Service) isBehind(node string) bool {
	s.repairMu.Lock()
	defer s.repairMu.Unlock()
	return s.behind[node] != nil
}

// runCatchUps catches up the behind nodes that answer, one at a time,
// until ctx ends.
func (s *Service) runCatchUps(ctx context.Context) {
	t := time.NewTicker(catchUpEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, node := range s.dueCatchUps() {
			if ctx.Err() != nil {
				return
			}
			s.catchUp(ctx, node)
		}
	}
}

// dueCatchUps lists the behind nodes whose wait has passed.
func (s *Service) dueCatchUps() []string {
	now := time.Now()
	s.repairMu.Lock()
	defer s.repairMu.Unlock()
	var due []string
	for node, b := range s.behind {
		if !now.Before(b.next) {
			due = append(due, node)
		}
	}
	slices.Sort(due)
	return due
}

// catchUp merges into node the timelines the rings place on it from the
// other ring nodes (or from the sources that failed the last time),
// unless it is taken for down (then a later tick tries). See behindNode
// for what happens to the repairs noted meanwhile.
func (s *Service) catchUp(ctx context.Context, node string) {
	if s.isDown(node) {
		return
	}
	s.repairMu.Lock()
	b := s.behind[node]
	if b == nil {
		s.repairMu.Unlock()
		return
	}
	sources := b.sources
	if sources == nil {
		s.forgetLocked(node, b) // this catch-up covers them
		b.overflow = false
	}
	s.repairMu.Unlock()

	start := time.Now()
	v, _ := s.current()
	merged, failed, err := s.catchUpFrom(ctx, v, node, sources)
	if ctx.Err() != nil {
		return
	}
	outcome := "done"
	var queued int
	var retryIn time.Duration
	remarked := false
	now := time.Now()
	s.repairMu.Lock()
	switch {
	case errors.Is(err, errTarget):
		// The node stopped answering: tried again once it answers, from
		// the same sources, or from all if too many repairs were noted.
		outcome = "failed"
		retryIn = catchUpRetry
		b.next = now.Add(retryIn)
	case b.overflow:
		outcome = "again"
		b.sources = nil
		retryIn = b.backOff(now)
	case len(failed) > 0:
		outcome = "failed"
		b.sources = failed
		retryIn = b.backOff(now)
		queued, remarked = s.queueMissedLocked(node, b)
	default:
		delete(s.behind, node)
		s.metrics.behind.Set(float64(len(s.behind)))
		queued, remarked = s.queueMissedLocked(node, b)
		if nb := s.behind[node]; nb != nil { // the queue was full again
			nb.wait = b.wait
			nb.backOff(now)
		}
	}
	s.repairMu.Unlock()
	s.metrics.catchUps.WithLabelValues(outcome).Inc()
	if remarked {
		s.logBehind(node, fmt.Sprintf("the repair queue (%d) was full after its catch-up", cap(s.repairs)))
	}
	took := time.Since(start).Round(time.Millisecond)
	switch outcome {
	case "done":
		s.log.Info("timeline node caught up from its siblings", "node", node, "copies_merged", merged, "repairs_after", queued, "took", took)
	case "again":
		s.log.Info("timeline node caught up, but it needs a whole catch-up again (too many repairs of it asked for meanwhile, or one given up); it stays behind", "node", node, "copies_merged", merged, "took", took, "err", err, "retry_in", retryIn)
	default:
		s.log.Warn("timeline node catch-up incomplete; it stays behind", "node", node, "copies_merged", merged, "repairs_after", queued, "took", took, "err", err, "retry_in", retryIn)
	}
}

// queueMissedLocked queues the repairs noted for node b; it reports how
// many, and whether one found the queue full (node b is behind again).
// repairMu is held.
func (s *Service) queueMissedLocked(node string, b *behindNode) (n int, remarked bool) {
	missed := b.missed
	b.missed = nil
	for o := range missed {
		remarked = s.queueRepairLocked(repair{owner: o, node: node}) || remarked
	}
	return len(missed), remarked
}

// errTarget marks a catch-up that failed because its node did not answer.
var errTarget = errors.New("the node did not answer")

// catchUpFrom merges into node, from each of sources (nil: each other
// node of v), the timelines that one holds and the rings of v place on
// node. It returns how many copies it merged, and the sources that did
// not answer: every one is asked, so that one that is down holds back none
// of the others' copies. If node itself stopped answering, the error
// wraps errTarget.
func (s *Service) catchUpFrom(ctx context.Context, v *view, node string, sources []string) (merged int, failed []string, err error) {
	if !slices.Contains(v.ids, node) {
		return 0, nil, nil // no longer on the rings: it holds nothing the site reads
	}
	if sources == nil {
		sources = slices.DeleteFunc(slices.Clone(v.ids), func(id string) bool { return id == node })
	}
	// The sources send columns; they go on to node as they came once it
	// has said it reads them (ReplicaMergeResponse.columns), and as
	// entries until then: a node that predates the columns reads only
	// entries. A batch sent as columns to a node that then answers
	// without columns (it restarted as an older binary) is sent again as
	// entries: merging twice is harmless.
	columns := false
	send := func(ts []*pb.ReplicaTimeline) error {
		mctx, cancel := context.WithTimeout(ctx, s.cfg.ReplicaTimeout)
		defer cancel()
		resp, err := s.replicaMerge(mctx, v, node, &pb.ReplicaMergeRequest{Timelines: ts})
		if err != nil {
			if ctx.Err() == nil {
				s.markDown(node)
			}
			return fmt.Errorf("%w: merge into %s: %w", errTarget, node, err)
		}
		columns = resp.GetColumns()
		return nil
	}
	merge := func(r *pb.ReplicaExportResponse) error {
		if err := checkTimelines(r.Timelines); err != nil {
			return err // the source's fault: not errTarget
		}
		sentColumns := columns
		if !sentColumns {
			toEntryMessages(r.Timelines)
		}
		if err := send(r.Timelines); err != nil {
			return err
		}
		if sentColumns && !columns {
			toEntryMessages(r.Timelines)
			if err := send(r.Timelines); err != nil {
				return err
			}
		}
		merged += len(r.Timelines)
		return nil
	}
	var errs []error
	for _, id := range sources {
		if !slices.Contains(v.ids, id) {
			continue // left the rings: the others hold its copies
		}
		var err error
		switch {
		case id == s.cfg.NodeID && s.store != nil:
			err = s.exportPlaced(ctx, s.store, v.ids, node, true, merge)
		case s.isDown(id):
			err = errors.New("taken for down")
		default:
			err = s.exportFrom(ctx, v, id, node, true, merge)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("from %s: %w", id, err))
			if errors.Is(err, errTarget) || ctx.Err() != nil {
				return merged, failed, errors.Join(errs...)
			}
			failed = append(failed, id)
		}
	}
	return merged, failed, errors.Join(errs...)
}

// toEntryMessages turns the timelines sent as columns into entries, for a
// node that reads only entries; checkColumns has passed them.
func toEntryMessages(ts []*pb.ReplicaTimeline) {
	for _, t := range ts {
		if len(t.StatusIds) > 0 {
			t.Entries = fromEntries(replicaEntries(t))
			t.StatusIds, t.AuthorIds, t.Flags = nil, nil, nil
		}
	}
}

// exportFrom passes each batch of sibling id's ReplicaExport for node to
// fn, asked for as columns if packed. The sibling must send each batch
// within ReplicaTimeout of being asked for it (the stream's start
// included): one that hangs holds a catch-up or refill no longer than
// that, and is taken for down.
func (s *Service) exportFrom(ctx context.Context, v *view, id, node string, packed bool, fn func(*pb.ReplicaExportResponse) error) error {
	c, err := s.client(v, id)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if fn fails
	failed := func(timedOut bool, err error) error {
		if timedOut && ctx.Err() == nil {
			s.markDown(id)
			return fmt.Errorf("sent nothing for %v: %w", s.cfg.ReplicaTimeout, err)
		}
		return err
	}
	d := s.cfg.ReplicaTimeout
	var stream pb.Timelines_ReplicaExportClient
	timedOut, _, err := within(d, cancel, func() (err error) {
		stream, err = c.ReplicaExport(sctx, &pb.ReplicaExportRequest{Node: node, RingNodes: v.ids, Packed: packed})
		return err
	})
	if err != nil {
		return failed(timedOut, err)
	}
	for {
		var resp *pb.ReplicaExportResponse
		timedOut, ended, err := within(d, cancel, func() (err error) {
			resp, err = stream.Recv()
			return err
		})
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return failed(timedOut, err)
		}
		if err := fn(resp); err != nil {
			return err
		}
		if ended {
			return errors.New("the stream ended: its idle timer fired as a batch arrived")
		}
	}
}

// within runs call, and cancel if call has not returned after d. It
// reports timedOut if cancel ended call (it returned an error after the
// timer fired), and ended if cancel ran at all: a call that returned just
// as the timer fired is not timed out, but what cancel ends is ended.
func within(d time.Duration, cancel func(), call func() error) (timedOut, ended bool, err error) {
	var state atomic.Int32 // 0 waiting, 1 returned, 2 timed out
	t := time.AfterFunc(d, func() {
		if state.CompareAndSwap(0, 2) {
			cancel()
		}
	})
	err = call()
	t.Stop()
	ended = !state.CompareAndSwap(0, 1)
	return ended && err != nil, ended, err
}
