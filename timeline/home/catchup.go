package home

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
)

// Catching up a node that missed more pushes than repairs deliver.
//
// A push that a replica misses is repaired timeline by timeline (repair,
// in read.go). That is cheap after a short outage, but the repair queue is
// bounded (Config.RepairQueue) and a repair is retried for repairAttempts
// seconds only. A node that misses pushes to more timelines than the queue
// holds, or is away longer, would keep stale timelines for good: it is not
// empty, so nothing refills it, and a read that reaches it first is
// answered from them. Such a node is marked behind instead. Its repairs
// are dropped (the catch-up covers them), and once it answers again it is
// caught up whole: every timeline the rings place on it is read from each
// of its siblings (ReplicaExport; this node's own memory without a call)
// and merged into it, as a node that restarts refills itself. Merging is a
// union of immutable entries, so a catch-up is safe at any time; what it
// costs is a copy of every timeline the node holds, from each sibling.

const (
	// catchUpEvery is how often the behind nodes are looked at.
	catchUpEvery = time.Second
	// catchUpRetry is the least time between two catch-ups of a node.
	catchUpRetry = 5 * time.Second
	// catchUpTimeout bounds one catch-up.
	catchUpTimeout = 10 * time.Minute
)

// behindNode is a node that missed pushes no repair will deliver.
type behindNode struct {
	// gen counts the pushes it missed since it was marked: a catch-up
	// that began before the last of them does not take the node off.
	gen     uint64
	lastTry time.Time
}

// markBehindLocked records that node missed a push that no repair will
// deliver. repairMu is held.
func (s *Service) markBehindLocked(node, why string) {
	b := s.behind[node]
	if b == nil {
		b = &behindNode{}
		s.behind[node] = b
		s.metrics.behind.Set(float64(len(s.behind)))
		s.log.Warn("timeline node missed more pushes than repairs deliver; it will be caught up from its siblings once it answers",
			"node", node, "why", why)
	}
	b.gen++
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
			s.catchUp(ctx, node)
		}
	}
}

// dueCatchUps lists the behind nodes not tried within catchUpRetry.
func (s *Service) dueCatchUps() []string {
	now := time.Now()
	s.repairMu.Lock()
	defer s.repairMu.Unlock()
	var due []string
	for node, b := range s.behind {
		if now.Sub(b.lastTry) >= catchUpRetry {
			due = append(due, node)
		}
	}
	slices.Sort(due)
	return due
}

// catchUp merges into node every timeline its siblings hold that the rings
// place on it, unless it is taken for down (then a later tick tries). The
// node stays behind if the catch-up failed, or if it missed more pushes
// meanwhile.
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
	gen := b.gen
	b.lastTry = time.Now()
	s.repairMu.Unlock()

	start := time.Now()
	v, _ := s.current()
	n, err := s.catchUpFrom(ctx, v, node)
	if ctx.Err() != nil {
		return
	}
	outcome := "done"
	s.repairMu.Lock()
	switch {
	case err != nil:
		outcome = "failed"
	case s.behind[node] != b:
	case b.gen != gen:
		outcome = "again" // it missed more pushes meanwhile
	default:
		delete(s.behind, node)
		s.metrics.behind.Set(float64(len(s.behind)))
	}
	s.repairMu.Unlock()
	s.metrics.catchUps.WithLabelValues(outcome).Inc()
	took := time.Since(start).Round(time.Millisecond)
	switch outcome {
	case "done":
		s.log.Info("timeline node caught up from its siblings", "node", node, "timelines", n, "took", took)
	case "again":
		s.log.Info("timeline node caught up, but missed pushes meanwhile; it will be caught up again", "node", node, "timelines", n, "took", took)
	default:
		s.log.Warn("timeline node catch-up failed; will retry", "node", node, "timelines", n, "took", took, "err", err, "in", catchUpRetry)
	}
}

// catchUpFrom merges into node, from each other node of v, the timelines
// that node holds and the rings of v place on node. It returns how many
// timelines it merged; every sibling must answer for it to succeed.
func (s *Service) catchUpFrom(ctx context.Context, v *view, node string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, catchUpTimeout)
	defer cancel()
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
	for _, id := range v.ids {
		if id == node {
			continue
		}
		var err error
		if id == s.cfg.NodeID && s.store != nil {
			err = s.exportPlaced(ctx, s.store, v.ids, node, merge)
		} else {
			err = s.exportFrom(ctx, v, id, node, merge)
		}
		if err != nil {
			return n, fmt.Errorf("from %s: %w", id, err)
		}
	}
	return n, nil
}

// exportFrom passes each batch of sibling id's ReplicaExport for node to fn.
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
	for {
		resp, err := stream.Recv()
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
