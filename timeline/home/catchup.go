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
// minutes only (repairAttempts). A node that misses pushes to more timelines than the queue
// holds, or is away longer, would keep stale timelines for good: it is not
// empty, so nothing refills it, and a read that reaches it first is
// answered from them. Such a node is marked behind instead. Its repairs
// are dropped (the catch-up covers them), and once it answers again it is
// caught up whole: every timeline the rings place on it is read from each
// of its siblings (ReplicaExport; this node's own memory without a call)
// and merged into it, as a node that restarts refills itself. Merging is a
// union of immutable entries, so a catch-up is safe at any time; what it
// costs is a copy of every timeline the node holds, from each other ring
// node, relayed through this one.

const (
	// catchUpEvery is how often the behind nodes are looked at.
	catchUpEvery = time.Second
	// catchUpRetry is the wait after a catch-up that failed, or that
	// overflowed its missed set, doubled after each one up to
	// catchUpMaxRetry.
	catchUpRetry    = 5 * time.Second
	catchUpMaxRetry = 5 * time.Minute
)

// behindNode is a node that missed pushes no repair will deliver.
type behindNode struct {
	// missed holds the timelines a repair of the node was asked for
	// since the running (or next) catch-up began: it may have read them
	// from the siblings before the push reached them, so they are
	// repaired one by one once it is done. More than maxMissed overflow:
	// the node stays behind, for another catch-up.
	missed    map[uint64]struct{}
	overflow  bool
	maxMissed int
	wait      time.Duration
	next      time.Time // not tried before
}

// note records a repair of timeline owner asked for while the node is
// behind.
func (b *behindNode) note(owner uint64) {
	if b.overflow {
		return
	}
	if len(b.missed) >= b.maxMissed {
		b.missed, b.overflow = nil, true
		return
	}
	if b.missed == nil {
		b.missed = map[uint64]struct{}{}
	}
	b.missed[owner] = struct{}{}
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

// catchUp merges into node every timeline the other ring nodes hold that
// the rings place on it, unless it is taken for down (then a later tick
// tries). If every sibling answered, the node is taken off, and the
// repairs asked for meanwhile are queued; if one did not, or too many
// repairs were asked for meanwhile, it stays behind and is tried again
// after a wait that doubles each time.
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
	b.missed, b.overflow = nil, false // this catch-up covers them
	s.repairMu.Unlock()

	start := time.Now()
	v, _ := s.current()
	merged, err := s.catchUpFrom(ctx, v, node)
	if ctx.Err() != nil {
		return
	}
	outcome := "done"
	var missed int
	var retryIn time.Duration
	remarked := false
	s.repairMu.Lock()
	switch {
	case err != nil || b.overflow:
		outcome = "failed"
		if err == nil {
			outcome = "again"
		}
		retryIn = b.wait
		b.next = time.Now().Add(b.wait)
		b.wait = min(2*b.wait, catchUpMaxRetry)
	default:
		delete(s.behind, node)
		s.metrics.behind.Set(float64(len(s.behind)))
		missed = len(b.missed)
		for o := range b.missed {
			remarked = s.scheduleRepairLocked(repair{owner: o, node: node}) || remarked
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
		s.log.Info("timeline node caught up from its siblings", "node", node, "copies_merged", merged, "repairs_after", missed, "took", took)
	case "again":
		s.log.Info("timeline node caught up, but missed too many pushes meanwhile; it stays behind", "node", node, "copies_merged", merged, "took", took, "retry_in", retryIn)
	default:
		s.log.Warn("timeline node catch-up incomplete; it stays behind", "node", node, "copies_merged", merged, "took", took, "err", err, "retry_in", retryIn)
	}
}

// catchUpFrom merges into node, from each other node of v, the timelines
// that one holds and the rings of v place on node. It returns how many
// copies it merged, and the sources that failed: every one is asked, so
// that one that is down holds back none of the others' copies.
func (s *Service) catchUpFrom(ctx context.Context, v *view, node string) (int, error) {
	if !slices.Contains(v.ids, node) {
		return 0, nil // no longer on the rings: it holds nothing the site reads
	}
	n := 0
	merge := func(r *pb.ReplicaExportResponse) error {
		mctx, cancel := context.WithTimeout(ctx, s.cfg.ReplicaTimeout)
		defer cancel()
		err := s.replicaMerge(mctx, v, node, &pb.ReplicaMergeRequest{Timelines: r.Timelines})
		if err != nil {
			if ctx.Err() == nil {
				s.markDown(node)
			}
			return fmt.Errorf("merge into %s: %w", node, err)
		}
		n += len(r.Timelines)
		return nil
	}
	var errs []error
	for _, id := range v.ids {
		if id == node {
			continue
		}
		var err error
		switch {
		case id == s.cfg.NodeID && s.store != nil:
			err = s.exportPlaced(ctx, s.store, v.ids, node, merge)
		case s.isDown(id):
			err = errors.New("taken for down")
		default:
			err = s.exportFrom(ctx, v, id, node, merge)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("from %s: %w", id, err))
			if s.isDown(node) || ctx.Err() != nil {
				break // the node itself stopped answering
			}
		}
	}
	return n, errors.Join(errs...)
}

// exportFrom passes each batch of sibling id's ReplicaExport for node to
// fn. The sibling must send each batch within ReplicaTimeout of asking
// for it: one that hangs does not hold the catch-up.
func (s *Service) exportFrom(ctx context.Context, v *view, id, node string, fn func(*pb.ReplicaExportResponse) error) error {
	c, err := s.client(v, id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if fn fails
	stream, err := c.ReplicaExport(ctx, &pb.ReplicaExportRequest{Node: node, RingNodes: v.ids})
	if err != nil {
		return err
	}
	var idle atomic.Bool
	for {
		t := time.AfterFunc(s.cfg.ReplicaTimeout, func() { idle.Store(true); cancel() })
		resp, err := stream.Recv()
		t.Stop()
		if err != nil && idle.Load() {
			return fmt.Errorf("no batch within %v: %w", s.cfg.ReplicaTimeout, err)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(resp); err != nil {
			return err
		}
	}
}
